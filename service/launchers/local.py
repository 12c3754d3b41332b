"""Workers as local processes: each in its own process group, logging to its own file."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from service.launchers.base import LOST, WorkerHandle
from service.launchers.gpus import GpuScheduler, Lease

__all__ = ["LocalLauncher", "process_start_time", "worker_log_path"]


def worker_log_path(data_dir: Path, study: str, worker_id: int) -> Path:
    """Where worker ``worker_id`` of ``study`` logs."""
    return data_dir / "studies" / study / "workers" / f"worker-{worker_id}.log"


def process_start_time(pid: int) -> float | None:
    """When ``pid`` started, in clock ticks since boot (None when it is gone or a zombie).

    Together with the pid it identifies a process: a reused pid has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (field 2, which may hold spaces): state is field 3,
    # the start time field 22.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # exited, not yet reaped by whoever adopted it
        return None
    return float(fields[19])


class LocalLauncher:
    """Starts ``helios-hpo worker`` processes on this host.

    Args:
        database_url: passed to workers through the environment, never argv.
        data_dir: where logs and checkpoints go.
        gpus: the GPU ids workers may use (each gets its own through CUDA_VISIBLE_DEVICES).
        workers_per_gpu: how many workers may share one GPU.
        extra_env: more environment for the workers.
    """

    name = "local"

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        gpus: Sequence[int] = (),
        workers_per_gpu: int = 1,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.host = socket.gethostname()
        self.scheduler = GpuScheduler({self.host: gpus}, workers_per_gpu)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self.on_exit: Callable[[], None] | None = None

    def start(
        self, study: str, worker_id: int, lease: Lease, image: str | None = None
    ) -> WorkerHandle:
        log_path = worker_log_path(self.data_dir, study, worker_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            # Workers never need the API's tokens.
            **{k: v for k, v in os.environ.items() if not k.startswith("HELIOS_HPO_API_TOKENS")},
            **self.extra_env,
            "HELIOS_HPO_DATABASE_URL": self.database_url,
            "HELIOS_HPO_DATA_DIR": str(self.data_dir),
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in lease.gpus),
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [
            sys.executable,
            "-m",
            "service.cli",
            "worker",
            "--study",
            study,
            "--worker-id",
            str(worker_id),
        ]
        with log_path.open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        self._children[worker_id] = proc
        threading.Thread(target=self._watch, args=(proc,), name="worker-exit", daemon=True).start()
        return WorkerHandle(
            host=self.host,
            pid=proc.pid,
            pid_start_time=process_start_time(proc.pid),
            log_path=log_path,
        )

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        if self.on_exit is not None:
            self.on_exit()

    def exit_code(self, worker_id: int, pid: int, pid_start_time: float | None) -> int | None:
        child = self._children.get(worker_id)
        if child is not None:
            return child.poll()
        # Not our child (started before a service restart): alive while pid and start time match.
        if pid_start_time is not None and process_start_time(pid) == pid_start_time:
            return None
        return LOST

    def stop(
        self, worker_id: int, pid: int, pid_start_time: float | None, timeout_s: float
    ) -> None:
        if self.exit_code(worker_id, pid, pid_start_time) is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.exit_code(worker_id, pid, pid_start_time) is not None:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        child = self._children.get(worker_id)
        if child is not None:
            child.wait()

    def forget(self, worker_id: int) -> None:
        """Drop what is kept about an ended worker."""
        self._children.pop(worker_id, None)
