"""The launcher protocol, and the registry that builds launchers from settings.

A launcher starts workers somewhere (local processes, containers, cluster jobs),
tells whether they still run, stops them and finds them again after a restart.
The supervisor, the API and the spec check know launchers only through this
protocol; a launcher module registers a factory under the name a spec's
``workers.launcher`` gives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Collection, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from service.launchers.gpus import GpuScheduler, Lease

if TYPE_CHECKING:
    from service.settings import Settings
    from service.spec.models import WorkersSpec

__all__ = [
    "LOST",
    "MISCONFIGURED",
    "UNREACHABLE",
    "LauncherUnavailable",
    "Launcher",
    "ENTRY_POINT_GROUP",
    "LauncherFactory",
    "UnknownLauncherError",
    "WorkerHandle",
    "WorkerLaunch",
    "from_settings",
    "gpu_errors",
    "instance_label",
    "launcher_errors",
    "register",
    "registered",
    "worker_log_path",
]

log = logging.getLogger(__name__)

# The exit code a launcher reports for a worker whose exit status it cannot read.
LOST = -255
# The exit code recorded for a worker that could not start: its host was unreachable.
UNREACHABLE = -2
# The exit code a launcher reports for a worker that could never run as set up (e.g. the
# data directory not shared with a cluster's nodes): its study fails at once, with its log.
MISCONFIGURED = -3


class LauncherUnavailable(Exception):
    """A launcher cannot reach the host it would start a worker on (an outage, not a
    crash: the study fails only once it lasts ``launcher_outage_s``)."""


def instance_label(database_url: str) -> str:
    """Tells this service's workers from those of a service on another database."""
    return hashlib.sha256(database_url.encode()).hexdigest()[:16]


def worker_log_path(data_dir: Path, study: str, worker_id: int) -> Path:
    """Where worker ``worker_id`` of ``study`` logs (on the service's side)."""
    return data_dir / "studies" / study / "workers" / f"worker-{worker_id}.log"


@dataclasses.dataclass(frozen=True)
class WorkerLaunch:
    """One worker to start: its study, its id (its row's), its GPUs, for containers its
    image (None: the launcher's default), and how many GPUs its spec asks (a launcher
    whose cluster assigns them, Slurm, leases none itself)."""

    study: str
    worker_id: int
    lease: Lease
    image: str | None = None
    gpus_per_worker: int = 0


@dataclasses.dataclass(frozen=True)
class WorkerHandle:
    """A started worker. ``ref`` finds it again, across service restarts too; only its
    launcher reads it. ``pid`` is for people (``ps``, ``kill``), where there is one."""

    ref: str
    host: str
    log_path: Path
    pid: int | None = None


class Launcher(Protocol):
    """Starts workers on the GPUs its scheduler leases, watches and stops them.

    Every method may raise when what it talks to is unreachable (a Docker host, a
    cluster's controller); the supervisor then asks again at its next tick.
    """

    name: str
    scheduler: GpuScheduler
    # Whether a study starts one worker until its first trial runs: its workers share
    # one host's cores, and starting together they would hold the first trial back.
    start_one_first: bool
    # Called, from any thread, when a worker this launcher started ends.
    on_exit: Callable[[], None] | None

    def spec_errors(self, workers: WorkersSpec) -> list[tuple[str, str]]:
        """Why these workers cannot run here: (field, reason) pairs, none when they can."""
        ...

    def start(self, launch: WorkerLaunch) -> WorkerHandle:
        """Start a worker; it runs ``helios-hpo worker --study S --worker-id N``."""
        ...

    def find(self, study: str, worker_id: int) -> WorkerHandle | None:
        """A worker that was started but whose handle was never recorded, or None."""
        ...

    def exit_code(self, ref: str) -> int | None:
        """None while it runs; its exit code (negative: a signal) or LOST once it ended."""
        ...

    def stop(self, ref: str) -> None:
        """Ask it to stop (SIGTERM: it fails its trial and exits); returns at once."""
        ...

    def kill(self, ref: str) -> None:
        """End it now (SIGKILL)."""
        ...

    def pending(self, ref: str) -> str | None:
        """Why a worker that has not ended waits to run (a queued job), None once it runs."""
        ...

    def log_lines(self, ref: str) -> list[str] | None:
        """A running worker's log, when the launcher reads it (a container's); None: the
        log is its file."""
        ...

    def forget(self, ref: str, log_path: Path) -> None:
        """An ended worker: keep its log at ``log_path`` and free what it still holds."""
        ...

    def remove_strays(self, known: Collection[str]) -> bool:
        """End workers of this service that no live row knows (refs not in ``known``).

        Returns whether every host was reached (False: call again later).
        """
        ...


def gpu_errors(
    workers: WorkersSpec, scheduler: GpuScheduler, where: str, setting: str
) -> list[tuple[str, str]]:
    """The error of a spec asking more GPUs per worker than any host of ``scheduler`` has
    (``where``: those hosts, in words; ``setting``: where the operator gives them)."""
    available = scheduler.capacity()
    if workers.gpus_per_worker <= available:
        return []
    return [
        (
            "workers.gpus_per_worker",
            f"{workers.gpus_per_worker} GPUs per worker asked, {where} has {available} "
            f"(set {setting})",
        )
    ]


LauncherFactory = Callable[["Settings"], Launcher | None]
F = TypeVar("F", bound=LauncherFactory)


@dataclasses.dataclass(frozen=True)
class _Entry:
    factory: LauncherFactory
    enable: str  # what an operator sets to enable it


_REGISTRY: dict[str, _Entry] = {}
# Launchers come from this entry-point group, the built-ins too (pyproject.toml): a
# Kubernetes or cloud launcher ships as a package of its own that names its factory.
ENTRY_POINT_GROUP = "helios_hpo.launchers"
_entry_points_loaded = False


def _load_entry_points() -> None:
    """Import each launcher the installed packages name, once; a broken one is logged and
    left out. A factory its module registered (``@register``) is taken as registered;
    another is registered under the entry point's name."""
    global _entry_points_loaded  # noqa: PLW0603 (one registry per process)
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            factory = ep.load()
            if ep.name not in _REGISTRY:
                register(ep.name, enable=f"see the {ep.dist.name if ep.dist else ep.value} docs")(
                    factory
                )
        except Exception:
            log.exception("could not load launcher entry point %s = %s", ep.name, ep.value)


class UnknownLauncherError(KeyError):
    """No launcher of that name is registered."""

    def __str__(self) -> str:
        return f"unknown launcher {self.args[0]!r}; launchers: {', '.join(registered())}"


def register(name: str, *, enable: str) -> Callable[[F], F]:
    """Register a launcher factory under ``name``: ``factory(settings)`` returns the
    launcher, or None when the settings do not enable it (``enable`` says how to)."""

    def add(factory: F) -> F:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"a launcher named {name!r} is registered already")
        _REGISTRY[name] = _Entry(factory, enable)
        return factory

    return add


def registered() -> list[str]:
    """The names of every registered launcher."""
    _load_entry_points()
    return sorted(_REGISTRY)


def from_settings(settings: Settings) -> dict[str, Launcher]:
    """The launchers the settings enable, by name."""
    _load_entry_points()
    built = {name: entry.factory(settings) for name, entry in _REGISTRY.items()}
    return {name: launcher for name, launcher in built.items() if launcher is not None}


def launcher_errors(
    launchers: Mapping[str, Launcher], workers: WorkersSpec
) -> list[tuple[str, str]]:
    """Why a spec's ``workers`` cannot run on this service: (field, reason) pairs."""
    launcher = launchers.get(workers.launcher)
    if launcher is not None:
        return launcher.spec_errors(workers)
    _load_entry_points()
    entry = _REGISTRY.get(workers.launcher)
    if entry is None:
        return [("workers.launcher", str(UnknownLauncherError(workers.launcher)))]
    return [
        (
            "workers.launcher",
            f"this service does not run {workers.launcher} workers ({entry.enable})",
        )
    ]
