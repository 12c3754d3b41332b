"""Study routes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response, status

from service import studies
from service.api.deps import SessionDep, SettingsDep, StorageDep
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
def create_study(
    spec: StudySpec, session: SessionDep, storage: StorageDep, settings: SettingsDep
) -> StudyRead:
    """Create a study and start its workers."""
    return studies.create_study(
        session, spec, storage, capacity=studies.WorkerCapacity.of(settings)
    )


@router.get("", response_model=Page[StudySummary], responses=_ERRORS)
def list_studies(session: SessionDep, limit: Limit = 50, offset: Offset = 0) -> Page[StudySummary]:
    """List studies, newest first."""
    return studies.list_studies(session, limit=limit, offset=offset)


@router.get("/{name}", response_model=StudyRead, responses=_ERRORS)
def read_study(name: str, session: SessionDep) -> StudyRead:
    """A study's spec, status, trial counts, best value and workers."""
    return studies.read_study(session, studies.get_study(session, name))


@router.get("/{name}/trials", response_model=Page[TrialRead], responses=_ERRORS)
def read_trials(
    name: str,
    session: SessionDep,
    state: TrialState | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[TrialRead]:
    """A page of the study's trials by number, optionally of one state."""
    return studies.read_trials(session, name, state=state, limit=limit, offset=offset)


@router.get("/{name}/best", response_model=BestRead, responses=_ERRORS)
def read_best(name: str, session: SessionDep) -> BestRead:
    """The best trial, or the Pareto front of a multi-objective study."""
    return studies.read_best(session, name)


@router.post("/{name}/stop", response_model=StudyRead, responses=_ERRORS)
def stop_study(name: str, session: SessionDep) -> StudyRead:
    """Stop a study now; in-flight trials end FAIL."""
    return studies.stop_study(session, name)


@router.post("/{name}/pause", response_model=StudyRead, responses=_ERRORS)
def pause_study(name: str, session: SessionDep) -> StudyRead:
    """Pause: workers finish their current trial and exit."""
    return studies.pause_study(session, name)


@router.post("/{name}/resume", response_model=StudyRead, responses=_ERRORS)
def resume_study(name: str, session: SessionDep) -> StudyRead:
    """Resume a paused, stopped or failed study."""
    return studies.resume_study(session, name)


@router.patch("/{name}", response_model=StudyRead, responses=_ERRORS)
def update_study(name: str, patch: StudyPatch, session: SessionDep) -> StudyRead:
    """Change n_trials, timeout_s or workers.count of a study, live."""
    return studies.update_study(session, name, patch)


@router.post(
    "/{name}/trials",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyRead,
    responses=_ERRORS,
)
def enqueue_trials(
    name: str, request: EnqueueRequest, session: SessionDep, storage: StorageDep
) -> StudyRead:
    """Queue parameter sets to run next."""
    return studies.enqueue_trials(session, name, request, storage)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_study(
    name: str, session: SessionDep, storage: StorageDep, settings: SettingsDep
) -> Response:
    """Delete a study that is not running, with its Optuna study, logs and checkpoints."""
    studies.delete_study(session, name, storage, settings.data_dir)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
