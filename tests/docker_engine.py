"""A Docker engine stand-in for tests, since no engine runs on the machines that run them.

It answers the part of the Docker SDK the launcher uses, and each container it runs
is a real ``helios-hpo worker`` process started with the container's command and
environment, its ``/data`` volume mapped to the service's data directory. It records
what a real engine would make visible: the GPUs each container was given, and any GPU
given to two running containers at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["Container", "ProcessEngine"]

REPO = Path(__file__).resolve().parents[1]


class Container:
    """A container whose process is a local one, in its own process group."""

    def __init__(
        self, engine: ProcessEngine, name: str, labels: dict[str, str], cmd: list[str],
        env: dict[str, str], gpus: list[str],
    ) -> None:  # fmt: skip
        self.engine, self.name, self.labels, self.gpus = engine, name, labels, gpus
        self.log_path = engine.logs_dir / f"{name}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    @property
    def status(self) -> str:
        return "running" if self.process.poll() is None else "exited"

    @property
    def attrs(self) -> dict[str, Any]:
        code = self.process.returncode or 0
        # Docker reports a process killed by signal N as exit code 128 + N.
        return {"State": {"Pid": self.process.pid, "ExitCode": 128 - code if code < 0 else code}}

    def reload(self) -> None:
        """The state is read live."""

    def logs(self, stdout: bool = True, stderr: bool = True) -> bytes:
        return self.log_path.read_bytes()

    def stop(self, timeout: int = 10) -> None:
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.process.wait()

    def remove(self, force: bool = False) -> None:
        if self.status == "running":
            if not force:
                raise RuntimeError(f"container {self.name} is running")
            self._signal(signal.SIGKILL)
            self.process.wait()
        self.engine.removed.append(self.name)
        del self.engine.containers.all[self.name]

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)


class _Containers:
    def __init__(self, engine: ProcessEngine) -> None:
        self.engine = engine
        self.all: dict[str, Container] = {}

    def run(
        self, *, image: str, command: list[str], name: str, environment: dict[str, str],
        labels: dict[str, str], device_requests: list[dict[str, Any]], **_: Any,
    ) -> Container:  # fmt: skip
        if name in self.all:
            raise RuntimeError(f"409 Conflict: the container name {name!r} is already in use")
        gpus = [gpu for request in device_requests for gpu in request["DeviceIDs"]]
        busy = {g for c in self.all.values() if c.status == "running" for g in c.gpus}
        if busy & set(gpus):
            self.engine.gpu_conflicts.append(f"{name} got GPUs {gpus}, busy: {sorted(busy)}")
        env = {
            **os.environ,
            **environment,
            "HELIOS_HPO_DATA_DIR": str(self.engine.data_dir),  # the /data volume
            "OMP_NUM_THREADS": "1",
        }
        # The worker image's entrypoint is `helios-hpo worker`.
        cmd = [sys.executable, "-m", "service.cli", "worker", *command]
        container = Container(self.engine, name, labels, cmd, env, gpus)
        self.engine.images.append(image)
        self.all[name] = container
        return container

    def list(self, all: bool = False, filters: dict[str, Any] | None = None) -> list[Container]:
        wanted = (filters or {}).get("label", [])
        pairs = [w.split("=", 1) for w in ([wanted] if isinstance(wanted, str) else wanted)]
        return [
            c
            for c in self.all.values()
            if (all or c.status == "running") and _all_match(c.labels, pairs)
        ]

    def stray(self, labels: dict[str, str]) -> Container:
        """A container the service did not start (left by an earlier service, say)."""
        idle = [sys.executable, "-c", "import time; time.sleep(600)"]
        container = Container(self.engine, f"stray-{len(self.all)}", labels, idle, {}, [])
        self.all[container.name] = container
        return container


def _all_match(labels: dict[str, str], pairs: list[list[str]]) -> bool:
    return all(labels.get(key) == value for key, value in pairs)


class ProcessEngine:
    """One Docker host: ``containers`` as the SDK's client has them."""

    def __init__(self, data_dir: Path, logs_dir: Path) -> None:
        self.data_dir, self.logs_dir = data_dir, logs_dir
        logs_dir.mkdir(parents=True, exist_ok=True)
        self.containers = _Containers(self)
        self.gpu_conflicts: list[str] = []
        self.images: list[str] = []
        self.removed: list[str] = []

    def close(self) -> None:
        """Kill what still runs."""
        for container in list(self.containers.all.values()):
            container.remove(force=True)
