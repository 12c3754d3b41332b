"""What the API reads of studies: rows, workers, summaries, trials, best trials, artifacts."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.orm import Session

from service.artifacts import listing, retention, store
from service.errors import NotFoundError
from service.read_models import (
    ArtifactRead,
    BestRead,
    Page,
    StudyRead,
    StudySummary,
    TrialRead,
    WorkerRead,
)
from service.spec.models import ArtifactsSpec, StudySpec
from service.storage import optuna_queries, optuna_trials
from service.storage.rows import StudyRow, StudyStatus, WorkerRow
from service.studies import lifecycle
from service.studies.trial_stats import TrialStats, trial_stats
from service.studies.warm_start import REPORT_KEY

__all__ = [
    "get_study",
    "get_worker",
    "list_studies",
    "list_workers",
    "read_best",
    "read_study",
    "read_trials",
    "study_row_id_query",
    "summary",
]


def study_row_id_query(name: str) -> Select[int]:
    """The id of our study named ``name``."""
    return select(StudyRow.id).where(StudyRow.name == name)


STUDY_BY_NAME = select(StudyRow).where(StudyRow.name == bindparam("name"))


STUDY_ID_BY_NAME = select(StudyRow.id).where(StudyRow.name == bindparam("name"))


def get_study(session: Session, name: str) -> StudyRow:
    """The study row named ``name``.

    Raises:
        NotFoundError: no such study (404).
    """
    row = session.scalar(STUDY_BY_NAME, {"name": name})
    if row is None:
        raise NotFoundError(f"no study named {name!r}")
    if row.status == StudyStatus.CREATING:
        raise NotFoundError(f"study {name!r} is being created; ask again in a moment")
    return row


def worker_ended(session: Session, worker_id: int) -> bool:
    """Whether the worker ended; a worker deleted with its study has ended too."""
    worker = session.get(WorkerRow, worker_id)
    return worker is None or not worker.live


def get_worker(session: Session, worker_id: int) -> WorkerRow:
    """The worker row ``worker_id``.

    Raises:
        NotFoundError: no such worker (404).
    """
    worker = session.get(WorkerRow, worker_id)
    if worker is None:
        raise NotFoundError(f"no worker {worker_id}")
    return worker


def _worker_reads(workers: list[WorkerRow]) -> list[WorkerRead]:
    """Workers oldest first, each with the crashes in a row (no trial finished) before it."""
    reads, streak = [], 0
    for worker in sorted(workers, key=lambda w: w.id):
        columns = {c.key: getattr(worker, c.key) for c in WorkerRow.__table__.columns}
        reads.append(WorkerRead.model_validate({**columns, "restarts": streak}))
        if lifecycle.crashed(worker):
            streak += 1
        elif not worker.live:
            streak = 0
    return reads


def list_workers(session: Session, name: str) -> list[WorkerRead]:
    """A study's workers, oldest first."""
    return _worker_reads(get_study(session, name).workers)


def list_studies(session: Session, *, limit: int, offset: int) -> Page[StudySummary]:
    """Studies, newest first."""
    total = session.scalar(select(func.count()).select_from(StudyRow)) or 0
    rows = session.scalars(
        select(StudyRow)
        .order_by(StudyRow.created_at.desc(), StudyRow.id.desc())
        .limit(limit)
        .offset(offset)
    )
    items = [
        StudySummary(
            name=r.name,
            task=r.task,
            status=r.status,
            n_trials=r.study_spec.n_trials,
            created_at=r.created_at,
        )
        for r in rows
    ]
    return Page(items=items, total=total, limit=limit, offset=offset)


def optuna_ref(session: Session, row: StudyRow) -> tuple[int, list[str]]:
    """Optuna's id of the study and its directions."""
    return _optuna_ref_named(session, row.name)


def _optuna_ref_named(session: Session, name: str) -> tuple[int, list[str]]:
    """Optuna's id and directions of the study named ``name``, without loading its row.

    Raises:
        NotFoundError: no such study, or its Optuna study is gone (404).
    """
    ref = optuna_queries.study_ref(session, name)
    if ref is None:
        if session.connection().scalar(STUDY_ID_BY_NAME, {"name": name}) is None:
            raise NotFoundError(f"no study named {name!r}")
        raise NotFoundError(
            f"study {name!r} has no Optuna study; it was deleted outside the service"
        )
    return ref


def read_study(session: Session, row: StudyRow) -> StudyRead:
    """The summary of a study: counts and best trial kept incrementally (``trial_stats``)."""
    optuna_id, directions = optuna_ref(session, row)
    spec = row.study_spec
    stats = _stats(session, optuna_id, directions)
    best = stats.best
    warm = (
        optuna_queries.study_system_attr(session, optuna_id, REPORT_KEY)
        if spec.warm_start is not None
        else None
    )
    return StudyRead(
        name=row.name,
        task=row.task,
        status=row.status,
        status_reason=row.status_reason,
        directions=directions,
        n_trials=spec.n_trials,
        counts={**stats.counts, "INFEASIBLE": stats.infeasible}
        if spec.constraints
        else stats.counts,
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_values=[best.value] if best else None,
        created_at=row.created_at,
        finished_at=row.finished_at,
        spec=spec,
        workers=_worker_reads(row.workers),
        warm_started=warm["copied"] if warm else None,
        warm_start_skipped=warm["skipped"] if warm else None,
    )


def summary(
    session: Session,
    name: str,
    data_dir: Path | None = None,
    models: store.ModelStore | None = None,
) -> StudyRead:
    """The summary of the study named ``name`` (with its bytes on disk given both
    ``data_dir`` and its ``models``' store)."""
    read = read_study(session, get_study(session, name))
    if data_dir is not None and models is not None:
        version = (read.status, tuple(read.counts.values()))
        read.disk = retention.disk_usage(session, name, data_dir, models, version)
    return read


def read_trials(
    session: Session, name: str, *, state: str | None, limit: int, offset: int
) -> Page[TrialRead]:
    """One page of a study's trials by number."""
    optuna_id, directions = _optuna_ref_named(session, name)
    counts = _stats(session, optuna_id, directions).counts
    total = counts[state] if state is not None else sum(counts.values())
    items = optuna_trials.trial_page(session, optuna_id, state=state, limit=limit, offset=offset)
    return Page(items=items, total=total, limit=limit, offset=offset)


def _stats(session: Session, optuna_id: int, directions: list[str]) -> TrialStats:
    return trial_stats(
        session.connection(), optuna_id, directions[0] if len(directions) == 1 else None
    )


def read_best(session: Session, name: str) -> BestRead:
    """The best trial, or the Pareto front of a multi-objective study."""
    optuna_id, directions = _optuna_ref_named(session, name)
    if len(directions) > 1:
        front = optuna_trials.pareto_front(session, optuna_id, directions)
        return BestRead(directions=directions, trials=front)
    best = _stats(session, optuna_id, directions).best
    ids = [best.trial_id] if best is not None else []
    return BestRead(directions=directions, trials=optuna_trials.trials_by_id(session, ids))


def _artifacts_context(session: Session, name: str) -> tuple[int, list[str], ArtifactsSpec]:
    optuna_id, directions = _optuna_ref_named(session, name)
    return optuna_id, directions, StudySpec.from_stored(get_study(session, name).spec).artifacts


def read_artifacts(
    session: Session, name: str, number: int, models: store.ModelStore
) -> list[ArtifactRead]:
    """The artifacts trial ``number`` of study ``name`` stored.

    Raises:
        NotFoundError: no such study or trial (404).
    """
    optuna_id, _, keep = _artifacts_context(session, name)
    return listing.list_artifacts(session, optuna_id, number, keep, models)


def read_artifact(
    session: Session, name: str, number: int, artifact_id: str, models: store.ModelStore
) -> ArtifactRead:
    """An artifact of trial ``number`` of study ``name``.

    Raises:
        NotFoundError: with why there is none to serve (404).
    """
    optuna_id, _, keep = _artifacts_context(session, name)
    return listing.trial_artifact(session, optuna_id, number, artifact_id, keep, models)


def read_best_model(
    session: Session, name: str, trial: int | None, models: store.ModelStore
) -> tuple[int, ArtifactRead]:
    """The best trial's model of study ``name`` (``trial`` of the Pareto front with
    several objectives), and its trial number.

    Raises:
        NotFoundError: with why there is none to serve (404).
        InvalidRequestError: several objectives and no ``trial`` (422).
    """
    optuna_id, directions, keep = _artifacts_context(session, name)
    return listing.best_model(session, optuna_id, directions, trial, keep, models)
