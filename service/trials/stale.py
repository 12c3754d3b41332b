"""Trials whose worker died: failed, and their retries queued by the storage's callback.

Two kinds, both judged without comparing clocks of different machines:

- a trial whose heartbeat stopped: Optuna compares its last heartbeat with the
  database's clock (``fail_stale_trials``);
- a trial that never sent one: its worker died between creating it and its first
  heartbeat, which a worker sends under the study's lock as the trial starts. A
  sweeper fails such a trial once it has seen it silent for the grace period by
  its own clock (a trial's ``datetime_start`` is the asking machine's local time).

Failing a trial and queueing its retry are two writes: a sweeper killed, or a
database error, between them would lose the retry. So each sweep of a running
study also queues the retry of any failure that has retries left and none queued.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import optuna
from sqlalchemy import Engine, select

from service.spec.models import StudySpec
from service.storage import optuna_queries
from service.storage.db import study_lock
from service.storage.rows import StudyRow, StudyStatus

__all__ = ["StaleTrials"]

log = logging.getLogger(__name__)


class StaleTrials:
    """Fails the stale trials of studies; one per process (a worker, the supervisor).

    Args:
        engine: the service's database.
        grace_s: how long a trial may go without a heartbeat.
        clock: seconds from a fixed point, for how long a trial was seen silent.
    """

    def __init__(
        self, engine: Engine, grace_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine, self._grace_s, self._clock = engine, grace_s, clock
        self._silent_since: dict[int, float] = {}  # trial id -> when first seen silent

    def sweep(
        self,
        study: optuna.Study,
        storage: optuna.storages.RDBStorage,
        study_row_id: int,
        optuna_id: int,
    ) -> list[int]:
        """Fail ``study``'s stale trials (``storage`` is its storage); the ids of those
        without any heartbeat it failed.

        Holds the study's lock: no reservation takes a freed budget slot before the
        retry is queued, and no trial is between its creation and its first heartbeat.
        """
        with study_lock(self._engine, study_row_id):
            optuna.storages.fail_stale_trials(study)
            with self._engine.connect() as conn:
                silent = set(optuna_queries.silent_running_trials(conn, optuna_id))
            now = self._clock()
            for trial_id in list(self._silent_since):
                if trial_id not in silent:  # it beat, or ended
                    del self._silent_since[trial_id]
            failed = []
            for trial_id in sorted(silent):
                since = self._silent_since.setdefault(trial_id, now)
                if now - since < self._grace_s:
                    continue
                try:
                    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
                except optuna.exceptions.UpdateFinishedTrialError:
                    continue  # it finished in the meantime
                del self._silent_since[trial_id]
                failed.append(trial_id)
                log.warning(
                    "trial id %s sent no heartbeat for %s s; failed it", trial_id, self._grace_s
                )
            self._queue_lost_retries(study, storage, study_row_id, optuna_id)
        return failed

    def _queue_lost_retries(
        self,
        study: optuna.Study,
        storage: optuna.storages.RDBStorage,
        study_row_id: int,
        optuna_id: int,
    ) -> None:
        """Queue the retry of each failure of a running study that has retries left and
        none queued (the trials failed above, and any whose retry a crash lost)."""
        retry = storage.get_heartbeat_stale_trial_callback()
        if retry is None:
            return
        with self._engine.connect() as conn:
            row = conn.execute(
                select(StudyRow.status, StudyRow.spec).where(StudyRow.id == study_row_id)
            ).one_or_none()
            if row is None or row.status not in (StudyStatus.RUNNING, StudyStatus.PAUSED):
                return  # an ended study's failures wait for no retry
            max_retries = StudySpec.from_stored(row.spec).max_retries
            lost = optuna_queries.unretried_failed_trials(conn, optuna_id)
        for trial_id, number, attempts in lost:
            if attempts > max_retries:
                continue
            log.warning("queueing the retry of failed trial %d", number)
            retry(study, storage.get_trial(trial_id))
