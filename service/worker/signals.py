"""How a worker takes SIGTERM, and its CPU priority."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

__all__ = ["WorkerStopped"]


class WorkerStopped(BaseException):
    """Raised in the worker's main thread by SIGTERM."""


class Sigterm:
    """SIGTERM raises WorkerStopped in the main thread at once, except while ``held``: from
    a trial's reservation until its training starts, and from the end of its training
    until it is recorded. There it waits for the trial to start training (the trial then
    fails, for a retry) or to be recorded, so that no trial is left RUNNING."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._held = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.reason = f"signal {signum}"
        if not self._held:
            raise WorkerStopped(self.reason)

    def raise_if_received(self) -> None:
        if self.reason is not None:
            raise WorkerStopped(self.reason)

    @contextlib.contextmanager
    def held(self, held: bool = True) -> Iterator[None]:
        """SIGTERM waits in the block (``held=False``: it raises in it, at once if one came)."""
        before, self._held = self._held, held
        try:
            if not held:
                self.raise_if_received()
            yield
        finally:
            self._held = before


sigterm = Sigterm()


def lower_priority(nice: int) -> int:
    """Lower this process's CPU priority by ``nice``; the resulting niceness.

    Under Linux's autogroup scheduling a niceness weighs only against processes of
    the same session, and a local worker leads its own: its session's group is
    lowered as well, or eight workers would still get eight shares to the
    service's one. (A worker started from a shell leaves the shell's group alone.)
    """
    value = os.nice(nice)
    if os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError):  # no autogroups (other kernels, some containers)
            Path("/proc/self/autogroup").write_text(f"{value}\n")
    return value
