"""Study routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status

from service import studies
from service.api.deps import DatabaseDep, LaunchersDep, SettingsDep, StorageDep, StudyName
from service.schemas import (
    BestRead,
    EnqueueRequest,
    ErrorBody,
    Page,
    StudyPatch,
    StudyRead,
    StudySpec,
    StudySummary,
    TrialRead,
)

router = APIRouter(prefix="/studies", tags=["studies"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such study"},
    409: {"model": ErrorBody, "description": "Conflicts with the study's state"},
    422: {"model": ErrorBody, "description": "Invalid input: which field, and why"},
}
Limit = Annotated[int, Query(ge=1, le=1000)]
# Bounded: the databases' integers are 64-bit.
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]
TrialState = Literal["RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL"]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StudyRead, responses=_ERRORS)
async def create_study(
    spec: StudySpec, db: DatabaseDep, storage: StorageDep, launchers: LaunchersDep
) -> StudyRead:
    """Create a study and start its workers."""
    return await db.run(studies.create_study, spec, storage, launchers=launchers)


@router.get("", response_model=Page[StudySummary], responses=_ERRORS)
async def list_studies(
    db: DatabaseDep, limit: Limit = 50, offset: Offset = 0
) -> Page[StudySummary]:
    """List studies, newest first."""
    return await db.run(studies.list_studies, limit=limit, offset=offset)


@router.get("/{name}", response_model=StudyRead, responses=_ERRORS)
async def read_study(name: StudyName, db: DatabaseDep) -> StudyRead:
    """A study's spec, status, trial counts, best value and workers."""
    return await db.run(studies.summary, name)


@router.get("/{name}/trials", response_model=Page[TrialRead], responses=_ERRORS)
async def read_trials(
    name: StudyName,
    db: DatabaseDep,
    state: TrialState | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[TrialRead]:
    """A page of the study's trials by number, optionally of one state."""
    return await db.run(studies.read_trials, name, state=state, limit=limit, offset=offset)


@router.get("/{name}/best", response_model=BestRead, responses=_ERRORS)
async def read_best(name: StudyName, db: DatabaseDep) -> BestRead:
    """The best trial, or the Pareto front of a multi-objective study."""
    return await db.run(studies.read_best, name)


@router.post("/{name}/stop", response_model=StudyRead, responses=_ERRORS)
async def stop_study(name: StudyName, db: DatabaseDep) -> StudyRead:
    """Stop a study now; in-flight trials end FAIL."""
    return await db.run(studies.stop_study, name)


@router.post("/{name}/pause", response_model=StudyRead, responses=_ERRORS)
async def pause_study(name: StudyName, db: DatabaseDep) -> StudyRead:
    """Pause: workers finish their current trial and exit."""
    return await db.run(studies.pause_study, name)


@router.post("/{name}/resume", response_model=StudyRead, responses=_ERRORS)
async def resume_study(name: StudyName, db: DatabaseDep) -> StudyRead:
    """Resume a paused, stopped or failed study."""
    return await db.run(studies.resume_study, name)


@router.patch("/{name}", response_model=StudyRead, responses=_ERRORS)
async def update_study(name: StudyName, patch: StudyPatch, db: DatabaseDep) -> StudyRead:
    """Change n_trials, timeout_s or workers.count of a study, live."""
    return await db.run(studies.update_study, name, patch)


@router.post(
    "/{name}/trials",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyRead,
    responses=_ERRORS,
)
async def enqueue_trials(
    name: StudyName, request: EnqueueRequest, db: DatabaseDep, storage: StorageDep
) -> StudyRead:
    """Queue parameter sets to run next."""
    return await db.run(studies.enqueue_trials, name, request, storage)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
async def delete_study(
    name: StudyName, db: DatabaseDep, storage: StorageDep, settings: SettingsDep
) -> Response:
    """Delete a study that is not running, with its Optuna study, logs and checkpoints."""
    await db.run(studies.delete_study, name, storage, settings.data_dir)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
