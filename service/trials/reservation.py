"""A worker's next trial: a slot of the study's budget, taken under the study's lock.

The study's status, spec and budget are read live at every reservation: pause,
stop and PATCH take effect at a worker's next trial. A reserved trial sends its
first heartbeat before the lock is released, so under the lock a RUNNING trial
without a heartbeat is one whose worker died (or lost the reply) while asking.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt

import optuna
from sqlalchemy import Engine, func, select, update

from service.spec.models import StudySpec
from service.storage import optuna_queries
from service.storage.db import study_lock
from service.storage.rows import LIVE_STATES, StudyRow, WorkerRow
from service.studies import lifecycle

__all__ = ["OptunaStudyGone", "Reservation", "Reservations", "Stop"]


class OptunaStudyGone(Exception):
    """The study's Optuna study was deleted or renamed outside the service."""


@dataclasses.dataclass(frozen=True)
class Reservation:
    """A trial to run, under the spec it was reserved with.

    ``origin`` is the trial whose checkpoints it continues: itself, or the first
    trial of the series it retries (``retries`` earlier attempts).
    """

    trial: optuna.Trial
    trial_id: int
    origin: int
    retries: int
    spec: StudySpec

    @property
    def number(self) -> int:
        return self.trial.number


@dataclasses.dataclass(frozen=True)
class Stop:
    """Why the worker takes no trial and exits."""

    reason: str


class Reservations:
    """Reserves trials of one study for one worker.

    Args:
        engine: the service's database.
        storage: the worker's Optuna storage (heartbeats on).
        study: the study, loaded with the worker's sampler and pruner.
        study_row_id: our id of the study; ``optuna_id``: Optuna's.
        worker_id: this worker's row.
    """

    def __init__(
        self,
        engine: Engine,
        storage: optuna.storages.RDBStorage,
        study: optuna.Study,
        *,
        study_row_id: int,
        optuna_id: int,
        worker_id: int,
    ) -> None:
        self._engine, self._storage, self._study = engine, storage, study
        self._row_id, self._optuna_id, self._worker_id = study_row_id, optuna_id, worker_id
        # Set while an ask may have created a trial whose reply was lost.
        self._in_doubt = False
        older = (
            select(func.count())
            .select_from(WorkerRow)
            .where(
                WorkerRow.study_id == study_row_id,
                WorkerRow.state.in_(LIVE_STATES),
                WorkerRow.id < worker_id,
            )
            .scalar_subquery()
        )
        # One round trip: the live status and spec, the budget used, the older live
        # workers (past workers.count the newest retire), whether Optuna's study exists.
        self._facts = select(
            StudyRow.status,
            StudyRow.spec,
            StudyRow.created_at,
            optuna_queries.budget_used_query(optuna_id).scalar_subquery(),
            older,
            optuna_queries.study_exists_query(optuna_id),
        ).where(StudyRow.id == study_row_id)

    def reserve(self, trials_run: int) -> Reservation | Stop:
        """The next trial, or why there is none; ``trials_run`` (the trials this worker
        ran) is recorded in its row.

        Safe to call again after a database error: a trial that an earlier call
        created without hearing back is taken, not left RUNNING.

        Raises:
            OptunaStudyGone: the Optuna study was deleted or renamed outside.
            UnreadableSpecError: the stored spec asks what this worker cannot do.
        """
        taken = self._take()
        with self._engine.begin() as conn:  # Core, not the ORM: this runs once per trial
            if trials_run:
                conn.execute(
                    update(WorkerRow)
                    .where(WorkerRow.id == self._worker_id)
                    .values(trials_run=trials_run)
                )
            if isinstance(taken, Stop):
                return taken
            trial, trial_id, spec = taken
            _, history = optuna_queries.reserved_trial(conn, self._optuna_id, trial.number)
        return Reservation(
            trial=trial,
            trial_id=trial_id,
            origin=history[0] if history else trial.number,
            retries=len(history),
            spec=spec,
        )

    def _take(self) -> tuple[optuna.Trial, int, StudySpec] | Stop:
        """Under the lock: check the live status, spec and budget, then take a trial (its
        id, and the spec it was taken under) and send its first heartbeat."""
        with study_lock(self._engine, self._row_id) as locked:
            # Read on the lock's own connection where it has one: no second one to open.
            with contextlib.nullcontext(locked) if locked else self._engine.connect() as conn:
                found = conn.execute(self._facts).one_or_none()
            if found is None:
                return Stop("study was deleted")
            status, stored, created_at, used, older, exists = found
            if not exists:
                raise OptunaStudyGone
            spec = StudySpec.from_stored(stored)
            reason = lifecycle.stop_reason(
                spec,
                status=status,
                budget_used=used,
                older_workers=older,
                created_at=created_at,
                now=dt.datetime.now(dt.UTC),
            )
            if reason is not None:
                return Stop(reason)
            trial = self._ask()
            # Through Optuna's storage, whose pooled connection the ask just used: the
            # lock holds this engine's.
            trial_id = self._storage.get_trial_id_from_study_id_trial_number(
                self._optuna_id, trial.number
            )
            self._storage.record_heartbeat(trial_id)  # before the lock is released
            self._in_doubt = False
        return trial, trial_id, spec

    def _ask(self) -> optuna.Trial:
        if self._in_doubt:
            # Under the lock, a RUNNING trial without a heartbeat was created by an ask
            # that did not hear back: ours. Take it instead of asking for another.
            with self._engine.connect() as conn:
                orphans = optuna_queries.silent_running_trials(conn, self._optuna_id)
            if orphans:
                return optuna.Trial(self._study, max(orphans))
        self._in_doubt = True
        return self._study.ask()
