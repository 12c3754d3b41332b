"""What changes a study: create, pause, resume, update, enqueue, stop, fail, delete."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.artifacts import listing, store
from service.errors import ConflictError, SpecError
from service.launchers import Launcher
from service.read_models import (
    StudyRead,
)
from service.spec.models import EnqueueRequest, StudyPatch, StudySpec
from service.spec.space import enqueue_errors
from service.storage import optuna_queries, optuna_writes
from service.storage.db import after_commit, session_scope
from service.storage.rows import StudyRow, StudyStatus
from service.studies import lifecycle
from service.studies.reads import (
    STUDY_BY_NAME,
    STUDY_ID_BY_NAME,
    get_study,
    optuna_ref,
    read_study,
)
from service.studies.validation import checked_spec
from service.studies.warm_start import REPORT_KEY, warm_start_trials

__all__ = [
    "create_study",
    "delete_study",
    "enqueue_trials",
    "fail_study",
    "pause_study",
    "resume_study",
    "retry_failed_trial",
    "stop_study",
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
    resolved = checked_spec(session, spec, launchers)
    if session.scalar(select(StudyRow.id).where(StudyRow.name == spec.name)) is not None:
        raise ConflictError(f"a study named {spec.name!r} exists; choose another name")
    if optuna_queries.optuna_study_id(session, spec.name) is not None:
        raise ConflictError(_optuna_name_taken(spec.name))
    # All or nothing across a crash: our row is committed first, as CREATING, then
    # Optuna's study and its warm starts; a row left CREATING by a service that died
    # is removed with its Optuna study when the service starts (remove_unfinished).
    row = StudyRow(
        name=spec.name,
        task=resolved.task,
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
        counts = optuna_queries.trial_counts(session, optuna_ref(session, row)[0])
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
    optuna_id, _ = optuna_ref(session, row)
    optuna_writes.add_trials(session.connection(), optuna_id, [_queued(p) for p in request.trials])
    return read_study(session, row)


def delete_study(
    session: Session,
    name: str,
    storage: optuna.storages.BaseStorage,
    data_dir: Path,
    models: store.ModelStore | None = None,
) -> None:
    """Delete a study that is not running, with its Optuna study, logs, checkpoints and
    stored models.

    Raises:
        ConflictError: the study runs, or its workers have not exited yet (409).
    """
    if session.scalar(STUDY_ID_BY_NAME, {"name": name}) is None and (
        optuna_queries.optuna_study_id(session, name) is not None
    ):
        # An Optuna study of no study of ours (made by another tool, or left by a crash).
        stored = listing.study_artifact_ids(session, name)
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
    stored = listing.study_artifact_ids(session, name)
    session.delete(row)
    session.flush()

    def remove_the_rest() -> None:  # after our commit: SQLite has one writer
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
        shutil.rmtree(data_dir / "studies" / name, ignore_errors=True)
        _remove_models(models, stored)

    after_commit(session, remove_the_rest)


def _remove_models(models: store.ModelStore | None, ids: list[str]) -> None:
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
    row = session.scalar(STUDY_BY_NAME, {"name": name})
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
