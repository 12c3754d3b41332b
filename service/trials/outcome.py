"""How a trial ended, recorded once: its state and values, a retry, the failure limit.

The outcome is decided while the trial's heartbeat still runs and recorded after
it, in one place. Every write is safe to repeat after a lost reply: a tell that
committed is not told again, and a retry is queued only where none exists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable
from typing import TypeVar

import optuna
from optuna.trial import TrialState
from sqlalchemy import Engine, select
from sqlalchemy.orm.exc import StaleDataError

from service.storage import optuna_queries, optuna_tables
from service.storage.db import make_session_factory, session_scope, study_lock, with_db_retries
from service.storage.rows import StudyRow
from service.studies import lifecycle
from service.studies.operations import fail_study
from service.trials.reservation import Reservation

__all__ = ["Outcome", "Recorder", "fail_study_now"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How a trial ended: ``values`` when it completed; ``stopped`` when SIGTERM ended it
    (the worker exits once it is recorded)."""

    state: TrialState
    values: list[float] | None = None
    stopped: bool = False


class Recorder:
    """Records the outcomes of one worker's trials.

    Args:
        engine: the service's database.
        storage: the worker's Optuna storage; ``study``: the study, loaded through it.
        study_row_id: our id of the study; ``optuna_id``: Optuna's.
        retry: queues a failed trial's retry (Optuna's RetryHeartbeatStaleTrialCallback).
        db_retry_s: how long to retry while the database is away.
    """

    def __init__(
        self,
        engine: Engine,
        storage: optuna.storages.RDBStorage,
        study: optuna.Study,
        *,
        study_row_id: int,
        optuna_id: int,
        retry: Callable[[optuna.Study, optuna.trial.FrozenTrial], None],
        db_retry_s: float,
    ) -> None:
        self._engine, self._storage, self._study = engine, storage, study
        self._row_id, self._optuna_id = study_row_id, optuna_id
        self._retry, self._db_retry_s = retry, db_retry_s

    def record(self, reservation: Reservation, outcome: Outcome) -> None:
        """Tell the outcome. A failure queues a retry (up to max_retries) unless the study
        was stopped on purpose, and fails the study past ``max_failed_trials``."""
        if outcome.state != TrialState.FAIL:
            self._tell(reservation, outcome)
            return
        # Under the study's lock: no reservation takes the freed slot before the retry.
        with contextlib.ExitStack() as locked:
            self._db(
                "taking the study's lock",
                lambda: locked.enter_context(study_lock(self._engine, self._row_id)),
            )
            # Stopped (or failed) on purpose: no retry, and no failure of the trial's own,
            # or resuming a study stopped amid many trials would fail it at once.
            stopped = outcome.stopped and self._db("reading the study", self._status) != "running"
            if stopped:
                self._db("marking the trial stopped", lambda: self._mark_stopped(reservation))
            if not self._tell(reservation, outcome) or stopped:
                return
            self._db("queueing a retry", lambda: self._queue_retry(reservation))
            self._db("checking the failure limit", lambda: self._check_failure_limit(reservation))

    def _db(self, what: str, action: Callable[[], T]) -> T:
        return with_db_retries(what, action, self._db_retry_s)

    def _tell(self, reservation: Reservation, outcome: Outcome) -> bool:
        """Whether the trial ended as ``outcome`` says (False: it had been failed as stale
        before, and the stale sweep queued its retry)."""
        state = None if outcome.state == TrialState.COMPLETE else outcome.state
        told = self._db(
            "recording the result",
            lambda: self._study.tell(
                reservation.trial, outcome.values, state=state, skip_if_finished=True
            ),
        )
        if state is not None and told.state != state:
            log.warning("trial was %s before its result could be recorded", told.state.name)
            return False
        return True

    def _mark_stopped(self, reservation: Reservation) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # failed as stale
            self._storage.set_trial_system_attr(
                reservation.trial_id, optuna_tables.STOPPED_KEY, True
            )

    def _queue_retry(self, reservation: Reservation) -> None:
        with self._engine.connect() as conn:
            if optuna_queries.has_retry(conn, self._optuna_id, reservation.number):
                return  # queued already, by an attempt whose reply was lost
        self._retry(self._study, self._storage.get_trial(reservation.trial_id))

    def _status(self) -> str | None:
        with self._engine.connect() as conn:
            return conn.scalar(select(StudyRow.status).where(StudyRow.id == self._row_id))

    def _check_failure_limit(self, reservation: Reservation) -> None:
        """Fail the study at once past ``max_failed_trials``: other workers start no more."""
        spec = reservation.spec
        if spec.max_failed_trials is None:
            return
        with self._engine.connect() as conn:
            failed = optuna_queries.unretried_failures(conn, self._optuna_id)
        verdict = lifecycle.failure_verdict(spec, failed)
        if verdict is not None and fail_study_now(self._engine, spec.name, verdict.reason):
            log.warning("study failed: %s", verdict.reason)


def fail_study_now(engine: Engine, name: str, reason: str) -> bool:
    """Fail a running study in a unit of work of its own; False when it no longer ran (or
    its status changed meanwhile: that change stands)."""
    try:
        with session_scope(make_session_factory(engine)) as session:
            return fail_study(session, name, reason)
    except StaleDataError:
        return False
