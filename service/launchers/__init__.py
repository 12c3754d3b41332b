"""How worker processes are started: ``local`` (subprocess) for now."""

from service.launchers.base import Launcher, WorkerHandle
from service.launchers.local import LocalLauncher, process_start_time

__all__ = ["Launcher", "LocalLauncher", "WorkerHandle", "process_start_time"]
