"""Domain logic: create, list, read and stop studies."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service import artifacts, lifecycle, optuna_tables, optuna_writes
from service.db import after_commit, session_scope
from service.errors import ConflictError, NotFoundError, SpecError
from service.launchers import Launcher, launcher_errors
from service.models import StudyRow, StudyStatus, WorkerRow
from service.schemas import (
    ArtifactRead,
    ArtifactsSpec,
    BestRead,
    EnqueueRequest,
    Page,
    StudyPatch,
    StudyRead,
    StudySpec,
    StudySummary,
    TrialRead,
    WorkerRead,
)
from service.space import enqueue_errors, resolve_spec
from service.tasks import UnknownTaskError, get_task
from service.trial_stats import TrialStats, trial_stats
from service.warm_start import REPORT_KEY, check_warm_start, warm_start_trials

__all__ = [
    "create_study",
    "delete_study",
    "enqueue_trials",
    "fail_study",
    "get_study",
    "get_worker",
    "list_studies",
    "list_workers",
    "pause_study",
    "read_best",
    "read_study",
    "read_trials",
    "resume_study",
    "retry_failed_trial",
    "study_row_id_query",
    "stop_study",
    "summary",
    "update_study",
]

log = logging.getLogger(__name__)


def create_study(
    session: Session,
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    *,
    launchers: Mapping[str, Launcher],
) -> StudyRead:
    """Validate ``spec``, create the Optuna study and the study row, enqueue warm starts.

    Nothing is left behind when it fails: the Optuna study is deleted again if
    the unit of work rolls back.

    Raises:
        SpecError: the spec is invalid (422).
        ConflictError: a study of that name exists (409).
    """
    try:
        task = get_task(spec.task)
    except UnknownTaskError as exc:
        raise SpecError([("task", str(exc))]) from None
    resolved = resolve_spec(spec, task)
    if errors := launcher_errors(launchers, resolved.workers):
        raise SpecError(errors)
    if session.scalar(select(StudyRow.id).where(StudyRow.name == spec.name)) is not None:
        raise ConflictError(f"a study named {spec.name!r} exists; choose another name")
    if optuna_tables.optuna_study_id(session, spec.name) is not None:
        raise ConflictError(_optuna_name_taken(spec.name))
    check_warm_start(session, resolved)
    # All or nothing across a crash: our row is committed first, as CREATING, then
    # Optuna's study and its warm starts; a row left CREATING by a service that died
    # is removed with its Optuna study when the service starts (remove_unfinished).
    row = StudyRow(
        name=spec.name,
        task=task.name,
        spec=resolved.model_dump(mode="json"),
        status=StudyStatus.CREATING,
    )
    session.add(row)
    try:
        session.commit()  # before Optuna writes: SQLite has one writer
    except IntegrityError:
        session.rollback()
        raise ConflictError(f"a study named {spec.name!r} exists; choose another name") from None
    try:
        directions = [o.direction for o in resolved.objectives or []]
        optuna.create_study(storage=storage, study_name=spec.name, directions=directions)
        # Its warm starts, queued trials and status in one transaction: all or none.
        optuna_id = storage.get_study_id_from_name(spec.name)
        trials: list[optuna.trial.FrozenTrial] = []
        if resolved.warm_start is not None:
            trials, report = warm_start_trials(storage, resolved)
            optuna_writes.set_study_system_attr(session.connection(), optuna_id, REPORT_KEY, report)
        trials += [_queued(params) for params in resolved.enqueue_trials]
        optuna_writes.add_trials(session.connection(), optuna_id, trials)
        row.set_status(StudyStatus.RUNNING, None)
        session.flush()
    except BaseException as exc:
        _remove_unfinished(session, row, storage)
        if isinstance(exc, optuna.exceptions.DuplicatedStudyError):
            raise ConflictError(_optuna_name_taken(spec.name)) from None
        raise
    return read_study(session, row)


def _queued(params: dict[str, Any]) -> optuna.trial.FrozenTrial:
    """A trial to run next with ``params``, as ``Study.enqueue_trial`` makes it."""
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState.WAITING, system_attrs={"fixed_params": dict(params)}
    )


def _optuna_name_taken(name: str) -> str:
    return (
        f"an Optuna study named {name!r} exists in this database without a study of this "
        f"service; choose another name, or delete it with DELETE /studies/{name}"
    )


def _remove_unfinished(
    session: Session, row: StudyRow, storage: optuna.storages.BaseStorage
) -> None:
    """Undo a creation that did not finish: its Optuna study (if made), then its row."""
    session.rollback()
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=row.name, storage=storage)
    session.delete(row)
    session.commit()


def remove_unfinished(session: Session, storage: optuna.storages.BaseStorage) -> list[str]:
    """Remove the studies a service that died left CREATING (at start: none is in progress)."""
    rows = session.scalars(select(StudyRow).where(StudyRow.status == StudyStatus.CREATING)).all()
    for row in rows:
        log.warning("study %s was left half-created by a stopped service; removing it", row.name)
        _remove_unfinished(session, row, storage)
    return [row.name for row in rows]


def study_row_id_query(name: str) -> Select[int]:
    """The id of our study named ``name``."""
    return select(StudyRow.id).where(StudyRow.name == name)


_STUDY_BY_NAME = select(StudyRow).where(StudyRow.name == bindparam("name"))
_STUDY_ID_BY_NAME = select(StudyRow.id).where(StudyRow.name == bindparam("name"))


def get_study(session: Session, name: str) -> StudyRow:
    """The study row named ``name``.

    Raises:
        NotFoundError: no such study (404).
    """
    row = session.scalar(_STUDY_BY_NAME, {"name": name})
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


def _optuna_ref(session: Session, row: StudyRow) -> tuple[int, list[str]]:
    """Optuna's id of the study and its directions."""
    return _optuna_ref_named(session, row.name)


def _optuna_ref_named(session: Session, name: str) -> tuple[int, list[str]]:
    """Optuna's id and directions of the study named ``name``, without loading its row.

    Raises:
        NotFoundError: no such study, or its Optuna study is gone (404).
    """
    ref = optuna_tables.study_ref(session, name)
    if ref is None:
        if session.connection().scalar(_STUDY_ID_BY_NAME, {"name": name}) is None:
            raise NotFoundError(f"no study named {name!r}")
        raise NotFoundError(
            f"study {name!r} has no Optuna study; it was deleted outside the service"
        )
    return ref


def read_study(session: Session, row: StudyRow) -> StudyRead:
    """The summary of a study: counts and best trial kept incrementally (``trial_stats``)."""
    optuna_id, directions = _optuna_ref(session, row)
    spec = row.study_spec
    stats = _stats(session, optuna_id, directions)
    best = stats.best
    warm = (
        optuna_tables.study_system_attr(session, optuna_id, REPORT_KEY)
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
    models: artifacts.ModelStore | None = None,
) -> StudyRead:
    """The summary of the study named ``name`` (with its bytes on disk given both
    ``data_dir`` and its ``models``' store)."""
    read = read_study(session, get_study(session, name))
    if data_dir is not None and models is not None:
        version = (read.status, tuple(read.counts.values()))
        read.disk = artifacts.disk_usage(session, name, data_dir, models, version)
    return read


def read_trials(
    session: Session, name: str, *, state: str | None, limit: int, offset: int
) -> Page[TrialRead]:
    """One page of a study's trials by number."""
    optuna_id, directions = _optuna_ref_named(session, name)
    counts = _stats(session, optuna_id, directions).counts
    total = counts[state] if state is not None else sum(counts.values())
    items = optuna_tables.trial_page(session, optuna_id, state=state, limit=limit, offset=offset)
    return Page(items=items, total=total, limit=limit, offset=offset)


def _stats(session: Session, optuna_id: int, directions: list[str]) -> TrialStats:
    return trial_stats(
        session.connection(), optuna_id, directions[0] if len(directions) == 1 else None
    )


def read_best(session: Session, name: str) -> BestRead:
    """The best trial, or the Pareto front of a multi-objective study."""
    optuna_id, directions = _optuna_ref_named(session, name)
    if len(directions) > 1:
        front = optuna_tables.pareto_front(session, optuna_id, directions)
        return BestRead(directions=directions, trials=front)
    best = _stats(session, optuna_id, directions).best
    ids = [best.trial_id] if best is not None else []
    return BestRead(directions=directions, trials=optuna_tables.trials_by_id(session, ids))


def pause_study(session: Session, name: str) -> StudyRead:
    """Pause: workers finish their current trial and exit; no new trial starts.

    Raises:
        ConflictError: the study is not running (409).
    """
    row = get_study(session, name)
    if row.status != StudyStatus.RUNNING:
        raise ConflictError(f"study {name!r} is {row.status}; only a running study can pause")
    row.set_status(StudyStatus.PAUSED, "paused on request")
    session.flush()
    return read_study(session, row)


def resume_study(session: Session, name: str) -> StudyRead:
    """Resume a paused, stopped or failed study: the supervisor starts its workers again.

    Crashes before the resume no longer count toward ``max_restarts``.

    Raises:
        ConflictError: the study is running, or finished (409).
    """
    row = get_study(session, name)
    if row.status == StudyStatus.RUNNING:
        raise ConflictError(f"study {name!r} is already running")
    if row.status == StudyStatus.FINISHED:
        raise ConflictError(
            f"study {name!r} finished; raise n_trials or timeout_s with PATCH to run more"
        )
    row.set_status(StudyStatus.RUNNING, None)
    row.resumed_at = dt.datetime.now(dt.UTC)
    session.flush()
    return read_study(session, row)


def update_study(session: Session, name: str, patch: StudyPatch) -> StudyRead:
    """Change the budget, the limits or workers.count; workers see it at their next trial.

    A finished study that the change leaves room to run in continues.
    """
    row = get_study(session, name)
    changes = patch.model_dump(exclude_unset=True)
    if nulls := [key for key in ("n_trials", "workers") if key in changes and changes[key] is None]:
        raise SpecError([(key, f"{key} cannot be null; leave it out to keep it") for key in nulls])
    spec = row.study_spec
    if patch.workers is not None:
        changes["workers"] = spec.workers.model_copy(update={"count": patch.workers.count})
    spec = row.study_spec = spec.model_copy(update=changes)
    if row.status == StudyStatus.FINISHED:
        counts = optuna_tables.trial_counts(session, _optuna_ref(session, row)[0])
        if lifecycle.has_room(spec, counts, row.created_at, dt.datetime.now(dt.UTC)):
            row.set_status(StudyStatus.RUNNING, None)
    session.flush()
    return read_study(session, row)


def enqueue_trials(session: Session, name: str, request: EnqueueRequest) -> StudyRead:
    """Queue parameter sets to run before sampled ones.

    Raises:
        SpecError: a parameter is unknown or outside the search space (422).
    """
    row = get_study(session, name)
    if row.status == StudyStatus.FINISHED:
        raise ConflictError(
            f"study {name!r} finished, so no queued trial would run; raise n_trials (or "
            "timeout_s) with PATCH first, then queue them"
        )
    errors = enqueue_errors(row.study_spec, request.trials, "trials")
    if errors:
        raise SpecError(errors)
    optuna_id, _ = _optuna_ref(session, row)
    optuna_writes.add_trials(session.connection(), optuna_id, [_queued(p) for p in request.trials])
    return read_study(session, row)


def delete_study(
    session: Session,
    name: str,
    storage: optuna.storages.BaseStorage,
    data_dir: Path,
    models: artifacts.ModelStore | None = None,
) -> None:
    """Delete a study that is not running, with its Optuna study, logs, checkpoints and
    stored models.

    Raises:
        ConflictError: the study runs, or its workers have not exited yet (409).
    """
    if session.scalar(_STUDY_ID_BY_NAME, {"name": name}) is None and (
        optuna_tables.optuna_study_id(session, name) is not None
    ):
        # An Optuna study of no study of ours (made by another tool, or left by a crash).
        stored = artifacts.study_artifact_ids(session, name)
        session.rollback()  # before Optuna writes: SQLite has one writer
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
        shutil.rmtree(data_dir / "studies" / name, ignore_errors=True)
        _remove_models(models, stored)
        return
    row = get_study(session, name)
    if row.status == StudyStatus.RUNNING:
        raise ConflictError(f"study {name!r} is running; stop or pause it before deleting it")
    if any(w.live for w in row.workers):
        raise ConflictError(
            f"study {name!r} still has running workers; wait for them to exit, then delete"
        )
    stored = artifacts.study_artifact_ids(session, name)
    session.delete(row)
    session.flush()

    def remove_the_rest() -> None:  # after our commit: SQLite has one writer
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
        shutil.rmtree(data_dir / "studies" / name, ignore_errors=True)
        _remove_models(models, stored)

    after_commit(session, remove_the_rest)


def _remove_models(models: artifacts.ModelStore | None, ids: list[str]) -> None:
    if models is None:
        return
    for artifact_id in ids:
        try:
            models.remove(artifact_id)
        except Exception:  # a bucket out of reach: the study is gone, its models stay
            log.warning("could not remove stored model %s", artifact_id, exc_info=True)


def retry_failed_trial(
    sessions: sessionmaker[Session],
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """A stale-trial callback for a shared storage: retries up to each study's max_retries."""

    def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with session_scope(sessions) as session:
            row = session.scalar(select(StudyRow).where(StudyRow.name == study.study_name))
            max_retries = row.study_spec.max_retries if row else 0
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries)(study, trial)

    return retry


def fail_study(session: Session, name: str, reason: str) -> bool:
    """Fail a running study (a worker found why it cannot go on); False when it does not
    run. A concurrent change of its status raises StaleDataError at the commit."""
    row = session.scalar(_STUDY_BY_NAME, {"name": name})
    if row is None or row.status != StudyStatus.RUNNING:
        return False
    row.set_status(StudyStatus.FAILED, reason)
    return True


def stop_study(session: Session, name: str) -> StudyRead:
    """Stop a study now: the supervisor stops its workers, in-flight trials end FAIL.

    Raises:
        ConflictError: the study already ended (409).
    """
    row = get_study(session, name)
    if row.status not in (StudyStatus.RUNNING, StudyStatus.PAUSED):
        raise ConflictError(
            f"study {name!r} is {row.status}; only a running or paused study can stop"
        )
    row.set_status(StudyStatus.STOPPED, "stopped on request")
    session.flush()
    return read_study(session, row)


def _artifacts_context(session: Session, name: str) -> tuple[int, list[str], ArtifactsSpec]:
    optuna_id, directions = _optuna_ref_named(session, name)
    return optuna_id, directions, StudySpec.from_stored(get_study(session, name).spec).artifacts


def read_artifacts(
    session: Session, name: str, number: int, models: artifacts.ModelStore
) -> list[ArtifactRead]:
    """The artifacts trial ``number`` of study ``name`` stored.

    Raises:
        NotFoundError: no such study or trial (404).
    """
    optuna_id, _, keep = _artifacts_context(session, name)
    return artifacts.list_artifacts(session, optuna_id, number, keep, models)


def read_artifact(
    session: Session, name: str, number: int, artifact_id: str, models: artifacts.ModelStore
) -> ArtifactRead:
    """An artifact of trial ``number`` of study ``name``.

    Raises:
        NotFoundError: with why there is none to serve (404).
    """
    optuna_id, _, keep = _artifacts_context(session, name)
    return artifacts.trial_artifact(session, optuna_id, number, artifact_id, keep, models)


def read_best_model(
    session: Session, name: str, trial: int | None, models: artifacts.ModelStore
) -> tuple[int, ArtifactRead]:
    """The best trial's model of study ``name`` (``trial`` of the Pareto front with
    several objectives), and its trial number.

    Raises:
        NotFoundError: with why there is none to serve (404).
        InvalidRequestError: several objectives and no ``trial`` (422).
    """
    optuna_id, directions, keep = _artifacts_context(session, name)
    return artifacts.best_model(session, optuna_id, directions, trial, keep, models)
