"""What the API answers: studies, trials, workers, artifacts, errors and pages."""

from __future__ import annotations

import datetime as dt
from typing import Any, Generic, TypeVar

from pydantic import (
    BaseModel,
    Field,
)

from service.spec.models import Objective, Param, StudySpec

__all__ = [
    "BestRead",
    "ErrorBody",
    "FieldError",
    "LogRead",
    "Page",
    "StudyRead",
    "StudySummary",
    "TaskRead",
    "TrialRead",
    "WorkerRead",
]

T = TypeVar("T")


class FieldError(BaseModel):
    """One invalid field: where it is and why."""

    field: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    code: str
    detail: str
    errors: list[FieldError] = Field(default_factory=list)


class Page(BaseModel, Generic[T]):
    """One page of a longer list."""

    items: list[T]
    total: int
    limit: int
    offset: int


class WorkerRead(BaseModel):
    """A worker process of a study."""

    id: int
    launcher: str
    host: str
    ref: str | None = Field(description="its launcher's handle: host:pid:start, host/container")
    pid: int | None
    gpus: str
    state: str = Field(description="starting, pending, running, exited, failed, stopped, lost")
    state_reason: str | None = Field(
        None, description="why it is pending, in its launcher's words (e.g. Slurm's Resources)"
    )
    exit_code: int | None
    trials_run: int
    restarts: int = Field(description="crashed workers in a row this one replaced")
    started_at: dt.datetime
    ended_at: dt.datetime | None


class LogRead(BaseModel):
    """The last lines of a worker's log (of one trial when asked)."""

    worker: int
    state: str
    lines: list[str]


class StudySummary(BaseModel):
    """A study in a list."""

    name: str
    task: str
    status: str
    n_trials: int
    created_at: dt.datetime


class DiskUsage(BaseModel):
    """Bytes a study holds in the data directory."""

    checkpoints_bytes: int = Field(
        description="working checkpoints: trials that run, and failed ones awaiting a retry"
    )
    artifacts_bytes: int | None = Field(
        description="stored models still kept (null: they are in an S3 bucket, not on disk)"
    )


class StudyRead(BaseModel):
    """A study: its spec, status, trial counts, best value and workers."""

    name: str
    task: str
    status: str
    status_reason: str | None
    directions: list[str]
    n_trials: int
    counts: dict[str, int] = Field(
        description="trials per state; with constraints, INFEASIBLE: COMPLETE trials that "
        "broke one (they are in COMPLETE too)"
    )
    best_trial: int | None
    best_value: float | None
    best_values: list[float | None] | None
    created_at: dt.datetime
    finished_at: dt.datetime | None
    spec: StudySpec
    workers: list[WorkerRead]
    disk: DiskUsage | None = Field(None, description="GET /studies/{name} only")
    warm_started: int | None = Field(
        None,
        description="trials copied in by the spec's warm_start (in the counts, not the budget)",
    )
    warm_start_skipped: dict[str, int] | None = Field(
        None, description="trials of the earlier study not copied, by reason"
    )


class TrialRead(BaseModel):
    """A trial with its parameters, values and intermediate values (null: NaN or infinite)."""

    number: int
    state: str
    params: dict[str, Any]
    values: list[float | None] | None
    intermediate_values: dict[int, float | None]
    datetime_start: dt.datetime | None
    datetime_complete: dt.datetime | None


class BestRead(BaseModel):
    """The best trial, or the Pareto front of a multi-objective study."""

    directions: list[str]
    trials: list[TrialRead]


class ArtifactRead(BaseModel):
    """A file a trial stored (its trained model), and whether it is still kept."""

    id: str
    filename: str
    mimetype: str
    size_bytes: int | None = Field(description="null once deleted")
    sha256: str | None
    available: bool
    reason: str | None = Field(None, description="why it is not available")
    stored_by: str | None = Field(
        None,
        description="a warm-start copy's model: 'STUDY/TRIAL', the trial it was copied from, "
        "which stored it",
    )


class TaskRead(BaseModel):
    """A task workers may train."""

    name: str
    description: str
    metrics: list[str]
    default_objectives: list[Objective]
    default_search_space: dict[str, Param]
    default_task_args: dict[str, Any]
    default_params: dict[str, Any]
