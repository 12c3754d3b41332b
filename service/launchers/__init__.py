"""Launchers: how workers are started (local processes, Docker containers, ...).

Each launcher module registers a factory under the name a spec's
``workers.launcher`` gives; ``from_settings`` builds those the settings enable.
"""

from service.launchers import docker, local, slurm  # noqa: F401 (they register themselves)
from service.launchers.base import (
    LOST,
    MISCONFIGURED,
    UNREACHABLE,
    Launcher,
    LauncherUnavailable,
    UnknownLauncherError,
    WorkerHandle,
    WorkerLaunch,
    from_settings,
    launcher_errors,
    register,
    registered,
    worker_log_path,
)
from service.launchers.gpus import GpuScheduler, Lease

__all__ = [
    "LOST",
    "MISCONFIGURED",
    "UNREACHABLE",
    "GpuScheduler",
    "Launcher",
    "LauncherUnavailable",
    "Lease",
    "UnknownLauncherError",
    "WorkerHandle",
    "WorkerLaunch",
    "from_settings",
    "launcher_errors",
    "register",
    "registered",
    "worker_log_path",
]
