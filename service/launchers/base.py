"""What the supervisor needs from a launcher."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from service.launchers.gpus import GpuScheduler, Lease

__all__ = ["LOST", "Launcher", "WorkerHandle"]

# The exit code a launcher reports for a worker whose exit status it cannot read.
LOST = -255


@dataclasses.dataclass(frozen=True)
class WorkerHandle:
    """Where a started worker runs."""

    host: str
    pid: int
    pid_start_time: float | None
    log_path: Path


class Launcher(Protocol):
    """Starts workers on the GPUs its scheduler leases, watches and stops them."""

    name: str
    scheduler: GpuScheduler
    # Called, from any thread, when a worker this launcher started ends.
    on_exit: Callable[[], None] | None

    def start(self, study: str, worker_id: int, lease: Lease, image: str | None) -> WorkerHandle:
        """Start worker ``worker_id`` of ``study`` on ``lease`` (``image``: containers only)."""
        ...

    def exit_code(self, worker_id: int, pid: int, pid_start_time: float | None) -> int | None:
        """The exit code; None while it runs, negative for a signal, LOST when unknown."""
        ...

    def stop(
        self, worker_id: int, pid: int, pid_start_time: float | None, timeout_s: float
    ) -> None:
        """Ask the worker to stop (SIGTERM), and kill it after ``timeout_s``."""
        ...

    def forget(self, worker_id: int) -> None:
        """Drop what is kept about an ended worker."""
        ...
