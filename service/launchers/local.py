"""Workers as local processes: each in its own session, logging to its own file.

A worker's ref is ``host:pid:start time``: the pid alone could name another
process once the worker ended. Each worker carries ``HELIOS_HPO_WORKER`` in
its environment (this service's instance and its worker id), so a restarted
service finds workers whose ref it never recorded, and ends strays.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from service.launchers.base import (
    LOST,
    WorkerHandle,
    WorkerLaunch,
    gpu_errors,
    instance_label,
    register,
    worker_log_path,
)
from service.launchers.gpus import GpuScheduler
from service.settings import WORKER_COMMAND, Settings
from service.spec.models import WorkersSpec

__all__ = ["WORKER_COMMAND", "LocalLauncher", "process_start_time"]

_MARKER = "HELIOS_HPO_WORKER"


def process_start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (None when it is gone or a zombie)."""
    stat = _stat(pid)
    if stat is None or stat[0] in ("Z", "X"):  # exited, not yet reaped
        return None
    return int(stat[19])


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'


def _marked_sessions(marker: str) -> dict[int, str]:
    """Processes that lead their session and have ``marker`` in their environment: pid ->
    its value."""
    prefix = f"{marker}=".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        values = [var[len(prefix) :] for var in environ.split(b"\0") if var.startswith(prefix)]
        stat = _stat(int(entry.name))
        if values and stat is not None and int(stat[3]) == int(entry.name):
            found[int(entry.name)] = values[0].decode(errors="replace")
    return found


class LocalLauncher:
    """Starts ``helios-hpo worker`` processes on this host.

    Args:
        database_url: passed to workers through the environment, never argv.
        data_dir: where logs and checkpoints go.
        gpus: the GPU ids workers may use (each gets its own through CUDA_VISIBLE_DEVICES).
        workers_per_gpu: how many workers may share one GPU.
        extra_env: more environment for the workers.
        command: what a worker runs, before ``--study S --worker-id N``.
    """

    name = "local"
    start_one_first = True

    def __init__(
        self,
        database_url: str,
        data_dir: Path,
        gpus: Sequence[int] = (),
        workers_per_gpu: int = 1,
        extra_env: dict[str, str] | None = None,
        command: Sequence[str] = WORKER_COMMAND,
    ) -> None:
        self.database_url = database_url
        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.command = list(command)
        self.host = socket.gethostname()
        self.instance = instance_label(database_url)
        self.scheduler = GpuScheduler({self.host: gpus}, workers_per_gpu)
        self._children: dict[int, subprocess.Popen[bytes]] = {}  # pid -> child
        self._lock = threading.Lock()
        self.on_exit: Callable[[], None] | None = None

    def spec_errors(self, workers: WorkersSpec) -> list[tuple[str, str]]:
        if workers.image is not None:
            return [("workers.image", "only containers have an image: choose their launcher")]
        return gpu_errors(workers, self.scheduler, "this service", "HELIOS_HPO_GPUS")

    def start(self, launch: WorkerLaunch) -> WorkerHandle:
        log_path = worker_log_path(self.data_dir, launch.study, launch.worker_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            # Workers never need the API's tokens.
            **{k: v for k, v in os.environ.items() if not k.startswith("HELIOS_HPO_API_TOKENS")},
            **self.extra_env,
            "HELIOS_HPO_DATABASE_URL": self.database_url,
            "HELIOS_HPO_DATA_DIR": str(self.data_dir),
            "CUDA_VISIBLE_DEVICES": launch.lease.gpu_list(),
            "PYTHONUNBUFFERED": "1",
            _MARKER: f"{self.instance}:{launch.worker_id}",
        }
        argv = [*self.command, "--study", launch.study, "--worker-id", str(launch.worker_id)]
        with log_path.open("ab") as log:
            proc = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                close_fds=True,
            )
        with self._lock:
            self._children[proc.pid] = proc
        threading.Thread(target=self._watch, args=(proc,), name="worker-exit", daemon=True).start()
        return self._handle(proc.pid, log_path)

    def _handle(self, pid: int, log_path: Path) -> WorkerHandle:
        ref = f"{self.host}:{pid}:{process_start_time(pid)}"
        return WorkerHandle(ref=ref, host=self.host, log_path=log_path, pid=pid)

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        if self.on_exit is not None:
            self.on_exit()

    def find(self, study: str, worker_id: int) -> WorkerHandle | None:
        wanted = f"{self.instance}:{worker_id}"
        for pid, value in _marked_sessions(_MARKER).items():
            if value == wanted:
                return self._handle(pid, worker_log_path(self.data_dir, study, worker_id))
        return None

    def _child(self, ref: str) -> tuple[int, subprocess.Popen[bytes] | None] | None:
        """The pid ``ref`` names and our child of that pid, or None when ``ref`` names no
        process of this host that still runs (or a started child of ours, ended or not)."""
        host, pid, started = ref.rsplit(":", 2)
        if host != self.host:
            return None
        with self._lock:
            child = self._children.get(int(pid))
        if child is not None:
            return int(pid), child
        return (int(pid), None) if str(process_start_time(int(pid))) == started else None

    def exit_code(self, ref: str) -> int | None:
        found = self._child(ref)
        if found is None:  # ended, and not our child: its exit status is not ours to read
            return LOST
        child = found[1]
        return child.poll() if child is not None else None

    def stop(self, ref: str) -> None:
        self._signal(ref, signal.SIGTERM)

    def kill(self, ref: str) -> None:
        self._signal(ref, signal.SIGKILL)

    def _signal(self, ref: str, signum: signal.Signals) -> None:
        if self.exit_code(ref) is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(ref.rsplit(":", 2)[1]), signum)  # the worker and its data loaders

    def pending(self, ref: str) -> str | None:
        return None  # started at once, or not at all

    def log_lines(self, ref: str) -> list[str] | None:
        return None  # a local worker's log is its file

    def forget(self, ref: str, log_path: Path) -> None:
        with self._lock:
            self._children.pop(int(ref.rsplit(":", 2)[1]), None)

    def remove_strays(self, known: Collection[str]) -> bool:
        prefix = f"{self.instance}:"
        for pid, value in _marked_sessions(_MARKER).items():
            if value.startswith(prefix) and self._handle(pid, Path()).ref not in known:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        return True


@register("local", enable="always on")
def local_launcher(settings: Settings) -> LocalLauncher:
    """Local workers, on the GPUs in HELIOS_HPO_GPUS."""
    return LocalLauncher(
        settings.database_url, settings.data_dir.resolve(), settings.gpus, settings.workers_per_gpu
    )
