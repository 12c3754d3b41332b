"""Domain logic: create, list, read and stop studies."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import optuna
from sqlalchemy import Engine, bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service import trials
from service.db import after_commit, after_rollback, session_scope, study_lock
from service.errors import ConflictError, NotFoundError, SpecError
from service.models import StudyRow, StudyStatus, WorkerRow, WorkerState, seconds_since
from service.schemas import (
    BestRead,
    EnqueueRequest,
    Page,
    StudyPatch,
    StudyRead,
    StudySpec,
    StudySummary,
    TrialRead,
    WorkerRead,
    WorkersSpec,
)
from service.settings import Settings
from service.space import distributions, param_errors, resolve_spec
from service.tasks import UnknownTaskError, get_task
from service.trial_stats import TrialStats, trial_stats

__all__ = [
    "WorkerCapacity",
    "create_study",
    "delete_study",
    "enqueue_trials",
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
    "sweep_stale_trials",
    "stop_study",
    "summary",
    "update_study",
]

log = logging.getLogger("helios_hpo.studies")


@dataclasses.dataclass(frozen=True)
class WorkerCapacity:
    """Where this service can start workers (from its settings)."""

    local_gpus: int
    docker_gpus: int | None = None  # the largest Docker host's GPUs; None: no Docker hosts
    docker_images: frozenset[str] = frozenset()  # images a spec may name

    @classmethod
    def of(cls, settings: Settings) -> WorkerCapacity:
        hosts = settings.docker_hosts
        return cls(
            local_gpus=len(settings.gpus),
            docker_gpus=max((len(h.gpus) for h in hosts), default=0) if hosts else None,
            docker_images=frozenset([settings.docker_image, *settings.docker_images]),
        )

    def errors(self, workers: WorkersSpec) -> list[tuple[str, str]]:
        """Why these workers cannot start here: (field, reason) pairs."""
        if workers.launcher == "local":
            if workers.image is not None:
                return [("workers.image", "only containers have an image: set launcher docker")]
            available, setting = self.local_gpus, "HELIOS_HPO_GPUS"
        elif self.docker_gpus is None:
            return [
                (
                    "workers.launcher",
                    "this service has no Docker hosts (set HELIOS_HPO_DOCKER_HOSTS)",
                )
            ]
        elif workers.image is not None and workers.image not in self.docker_images:
            return [
                (
                    "workers.image",
                    f"{workers.image!r} is not an allowed image; allowed: "
                    f"{sorted(self.docker_images)} (HELIOS_HPO_DOCKER_IMAGES)",
                )
            ]
        else:
            available, setting = self.docker_gpus, "HELIOS_HPO_DOCKER_HOSTS"
        if workers.gpus_per_worker > available:
            return [
                (
                    "workers.gpus_per_worker",
                    f"{workers.gpus_per_worker} GPUs per worker asked, this service has "
                    f"{available} (set {setting})",
                )
            ]
        return []


def create_study(
    session: Session,
    spec: StudySpec,
    storage: optuna.storages.BaseStorage,
    *,
    capacity: WorkerCapacity,
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
    if errors := capacity.errors(resolved.workers):
        raise SpecError(errors)
    if session.scalar(select(StudyRow.id).where(StudyRow.name == spec.name)) is not None:
        raise ConflictError(f"a study named {spec.name!r} exists; choose another name")
    if trials.optuna_study_id(session, spec.name) is not None:
        raise ConflictError(
            f"an Optuna study named {spec.name!r} exists in this database; choose another name"
        )
    # SQLite has one writer at a time: Optuna writes (and commits) first, then our
    # row is flushed; a rollback of this unit of work deletes the Optuna study again.
    directions = [o.direction for o in resolved.objectives or []]
    try:
        study = optuna.create_study(storage=storage, study_name=spec.name, directions=directions)
    except optuna.exceptions.DuplicatedStudyError:
        raise ConflictError(
            f"an Optuna study named {spec.name!r} exists in this database; choose another name"
        ) from None
    after_rollback(session, lambda: optuna.delete_study(study_name=spec.name, storage=storage))
    for params in resolved.enqueue_trials:
        study.enqueue_trial(dict(params))
    row = StudyRow(name=spec.name, task=task.name, spec=resolved.model_dump(mode="json"))
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        raise ConflictError(f"a study named {spec.name!r} exists; choose another name") from None
    return read_study(session, row)


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
    return row


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
        if worker.crashed:
            streak += 1
        elif worker.state != WorkerState.RUNNING:
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
            n_trials=r.spec["n_trials"],
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
    ref = trials.study_ref(session, name)
    if ref is None:
        if session.connection().scalar(_STUDY_ID_BY_NAME, {"name": name}) is None:
            raise NotFoundError(f"no study named {name!r}")
        raise NotFoundError(
            f"study {name!r} has no Optuna study; it was deleted outside the service"
        )
    return ref


def read_study(session: Session, row: StudyRow) -> StudyRead:
    """The summary of a study: counts and best trial kept incrementally (``trial_stats``)."""
    study_id, directions = _optuna_ref(session, row)
    stats = _stats(session, study_id, directions)
    best = stats.best
    return StudyRead(
        name=row.name,
        task=row.task,
        status=row.status,
        status_reason=row.status_reason,
        directions=directions,
        n_trials=row.spec["n_trials"],
        counts=stats.counts,
        best_trial=best.number if best else None,
        best_value=best.value if best else None,
        best_values=[best.value] if best else None,
        created_at=row.created_at,
        finished_at=row.finished_at,
        spec=StudySpec.model_validate(row.spec),
        workers=_worker_reads(row.workers),
    )


def summary(session: Session, name: str) -> StudyRead:
    """The summary of the study named ``name``."""
    return read_study(session, get_study(session, name))


def read_trials(
    session: Session, name: str, *, state: str | None, limit: int, offset: int
) -> Page[TrialRead]:
    """One page of a study's trials by number."""
    study_id, directions = _optuna_ref_named(session, name)
    counts = _stats(session, study_id, directions).counts
    total = counts[state] if state is not None else sum(counts.values())
    items = trials.trial_page(session, study_id, state=state, limit=limit, offset=offset)
    return Page(items=items, total=total, limit=limit, offset=offset)


def _stats(session: Session, study_id: int, directions: list[str]) -> TrialStats:
    return trial_stats(
        session.connection(), study_id, directions[0] if len(directions) == 1 else None
    )


def read_best(session: Session, name: str) -> BestRead:
    """The best trial, or the Pareto front of a multi-objective study."""
    study_id, directions = _optuna_ref_named(session, name)
    if len(directions) > 1:
        front = trials.pareto_front(session, study_id, directions)
        return BestRead(directions=directions, trials=front)
    best = _stats(session, study_id, directions).best
    ids = [best.trial_id] if best is not None else []
    return BestRead(directions=directions, trials=trials.trials_by_id(session, ids))


def _set_status(row: StudyRow, status: StudyStatus, reason: str | None) -> None:
    row.status = status
    row.status_reason = reason
    ended = status in (StudyStatus.FINISHED, StudyStatus.STOPPED, StudyStatus.FAILED)
    row.finished_at = dt.datetime.now(dt.UTC) if ended else None


def pause_study(session: Session, name: str) -> StudyRead:
    """Pause: workers finish their current trial and exit; no new trial starts.

    Raises:
        ConflictError: the study is not running (409).
    """
    row = get_study(session, name)
    if row.status != StudyStatus.RUNNING:
        raise ConflictError(f"study {name!r} is {row.status}; only a running study can pause")
    _set_status(row, StudyStatus.PAUSED, "paused on request")
    session.flush()
    return read_study(session, row)


def resume_study(session: Session, name: str) -> StudyRead:
    """Resume a paused, stopped or failed study: the supervisor starts its workers again.

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
    _set_status(row, StudyStatus.RUNNING, None)
    session.flush()
    return read_study(session, row)


def update_study(session: Session, name: str, patch: StudyPatch) -> StudyRead:
    """Change n_trials, timeout_s or workers.count; workers see it at their next trial.

    A finished study that the change leaves room to run in continues.
    """
    row = get_study(session, name)
    spec = dict(row.spec)
    changes = patch.model_dump(exclude_unset=True)
    if "n_trials" in changes and patch.n_trials is None:
        raise SpecError([("n_trials", "n_trials cannot be null")])
    if patch.n_trials is not None:
        spec["n_trials"] = patch.n_trials
    if "timeout_s" in changes:
        spec["timeout_s"] = patch.timeout_s
    if patch.workers is not None:
        spec["workers"] = {**spec["workers"], "count": patch.workers.count}
    row.spec = spec  # a new dict: the JSON column sees the change
    if row.status == StudyStatus.FINISHED:
        counts = trials.trial_counts(session, _optuna_ref(session, row)[0])
        room = counts["COMPLETE"] + counts["PRUNED"] < spec["n_trials"]
        in_time = spec["timeout_s"] is None or seconds_since(row.created_at) < spec["timeout_s"]
        if room and in_time:
            _set_status(row, StudyStatus.RUNNING, None)
    session.flush()
    return read_study(session, row)


def enqueue_trials(
    session: Session, name: str, request: EnqueueRequest, storage: optuna.storages.BaseStorage
) -> StudyRead:
    """Queue parameter sets to run before sampled ones.

    Raises:
        SpecError: a parameter is unknown or outside the search space (422).
    """
    row = get_study(session, name)
    spec = StudySpec.model_validate(row.spec)
    errors = param_errors(request.trials, distributions(spec), "trials")
    if errors:
        raise SpecError(errors)
    study = optuna.load_study(study_name=name, storage=storage)
    for params in request.trials:
        study.enqueue_trial(dict(params))
    return read_study(session, row)


def delete_study(
    session: Session, name: str, storage: optuna.storages.BaseStorage, data_dir: Path
) -> None:
    """Delete a study that is not running, with its Optuna study, logs and checkpoints.

    Raises:
        ConflictError: the study runs, or its workers have not exited yet (409).
    """
    row = get_study(session, name)
    if row.status == StudyStatus.RUNNING:
        raise ConflictError(f"study {name!r} is running; stop or pause it before deleting it")
    if any(w.state == WorkerState.RUNNING for w in row.workers):
        raise ConflictError(
            f"study {name!r} still has running workers; wait for them to exit, then delete"
        )
    session.delete(row)
    session.flush()

    def remove_the_rest() -> None:  # after our commit: SQLite has one writer
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=storage)
        shutil.rmtree(data_dir / "studies" / name, ignore_errors=True)

    after_commit(session, remove_the_rest)


def retry_failed_trial(
    sessions: sessionmaker[Session],
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """A stale-trial callback for a shared storage: retries up to each study's max_retries."""

    def retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with session_scope(sessions) as session:
            row = session.scalar(select(StudyRow).where(StudyRow.name == study.study_name))
            max_retries = StudySpec.model_validate(row.spec).max_retries if row else 0
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retries)(study, trial)

    return retry


def sweep_stale_trials(
    engine: Engine,
    sessions: sessionmaker[Session],
    storage: optuna.storages.RDBStorage,
    study: optuna.Study,
    grace_s: float,
) -> None:
    """Fail trials whose worker died (the storage's callback queues their retries).

    Optuna's own stale check skips RUNNING trials that never sent a heartbeat (a
    worker's first one comes one interval into the trial); those are failed here
    once they started more than ``grace_s`` ago. Failing and queueing the retry
    hold the study's lock, so that no worker takes the freed budget slot for a
    new trial in between.
    """
    with session_scope(sessions) as session:
        row_id = session.scalar(select(StudyRow.id).where(StudyRow.name == study.study_name))
        study_id = trials.optuna_study_id(session, study.study_name)
        silent = trials.silent_running_trials(session, study_id, grace_s) if study_id else []
    if row_id is None:
        return
    with study_lock(engine, row_id):  # after our session: SQLite has one writer
        retry = storage.get_heartbeat_stale_trial_callback()
        for trial_id in silent:
            try:
                storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # it finished in the meantime
            log.warning("trial id %s sent no heartbeat for %s s; failed it", trial_id, grace_s)
            if retry is not None:
                retry(study, storage.get_trial(trial_id))
        optuna.storages.fail_stale_trials(study)


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
    _set_status(row, StudyStatus.STOPPED, "stopped on request")
    session.flush()
    return read_study(session, row)
