"""Launchers: how workers are started (local processes, Docker containers, ...).

Each launcher is a factory registered under the name a spec's ``workers.launcher``
gives, found through the ``helios_hpo.launchers`` entry-point group (the built-ins
are listed there too, in pyproject.toml); ``from_settings`` builds those the settings
enable.
"""

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
