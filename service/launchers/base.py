"""What the supervisor needs from a launcher."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

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
    """Watches and stops the workers it started (how it starts them is its own)."""

    name: str
    # Called, from any thread, when a worker this launcher started ends.
    on_exit: Callable[[], None] | None

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
