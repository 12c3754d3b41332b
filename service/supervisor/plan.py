"""What the supervisor saw of a study's workers, and what it decided to do."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from service.launchers import (
    Launcher,
    WorkerHandle,
    WorkerLaunch,
)


@dataclasses.dataclass(frozen=True)
class Held:
    """A worker this service started or adopted: what frees it once it ended."""

    launcher: Launcher
    ref: str
    log_path: Path


@dataclasses.dataclass
class Seen:
    """What the launchers said of a study's live workers."""

    exits: dict[int, int] = dataclasses.field(default_factory=dict)  # worker id -> exit code
    # Workers whose handle was never recorded: found running, or None.
    found: dict[int, WorkerHandle | None] = dataclasses.field(default_factory=dict)
    # Workers that run or wait: None, or why they wait (a queued job's reason).
    waiting: dict[int, str | None] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Plan:
    """What to do once a study's unit of work committed."""

    name: str
    row_id: int
    optuna_id: int | None
    starts: list[tuple[Launcher, WorkerLaunch]] = dataclasses.field(default_factory=list)
    stops: list[tuple[int, Launcher, str]] = dataclasses.field(default_factory=list)
    fail_running: bool = False  # stopped or failed, no worker left: fail its RUNNING trials
    sweep: bool = False  # no worker left to notice stale trials: fail them here


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
