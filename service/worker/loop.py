"""The worker's loop: reserve a trial, train it, record its outcome, until the study stops."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable
from typing import TypeVar

import optuna
from optuna.trial import TrialState
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings
from service.spec.models import StudySpec
from service.spec.space import build_pruner, build_sampler
from service.storage import optuna_queries
from service.storage.db import (
    DB_ERRORS,
    WORKER_POOL,
    make_engine,
    make_session_factory,
    optuna_storage,
    session_scope,
    with_db_retries,
)
from service.storage.rows import WorkerRow
from service.studies.reads import get_study
from service.trials.outcome import Outcome, Recorder
from service.trials.reservation import OptunaStudyGone, Reservation, Reservations, Stop
from service.trials.stale import StaleTrials
from service.worker import signals
from service.worker.heartbeat import Heartbeat
from service.worker.log_lines import current_trial
from service.worker.ranks import Ranks, RanksFailed
from service.worker.signals import WorkerStopped
from service.worker.training import Training, trial_checkpoint_dir

log = logging.getLogger(__name__)

T = TypeVar("T")


class Worker:
    """One worker's study: reserves trials, trains them, records how each ended."""

    def __init__(self, study_name: str, worker_id: int, settings: Settings) -> None:
        self.name, self.worker_id, self.settings = study_name, worker_id, settings
        self.trials_run = 0
        self.engine = make_engine(settings.database_url, WORKER_POOL)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        with session_scope(self.sessions) as session:
            row = get_study(session, study_name)
            self.row_id = row.id
            stored = row.spec
        self.spec = StudySpec.from_stored(stored)
        # Trials failed here or found stale are queued again with the same parameters.
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=self.spec.max_retries)
        self.storage = optuna_storage(
            settings.database_url,
            heartbeat_interval=settings.heartbeat_interval_s,
            grace_period=settings.heartbeat_grace_s,
            stale_trial_callback=retry,
            pool=WORKER_POOL,
        )
        self.study = optuna.load_study(
            study_name=study_name,
            storage=self.storage,
            sampler=build_sampler(self.spec.sampler, seed_offset=worker_id),
            pruner=build_pruner(self.spec.pruner),
        )
        self.optuna_id = self.storage.get_study_id_from_name(study_name)
        ids = {"study_row_id": self.row_id, "optuna_id": self.optuna_id}
        self.reservations = Reservations(
            self.engine, self.storage, self.study, worker_id=worker_id, **ids
        )
        self.recorder = Recorder(
            self.engine,
            self.storage,
            self.study,
            retry=retry,
            db_retry_s=settings.db_retry_s,
            **ids,
        )
        self.stale = StaleTrials(self.engine, settings.heartbeat_grace_s)
        self.training = Training(study_name, self.spec, settings)
        self.heartbeat = Heartbeat(
            self.storage, settings.heartbeat_interval_s, self._training, self._trained
        )
        # On several ranks, the others learn from this one what to train.
        self.ranks = Ranks(stored)

    def close(self) -> None:
        """Close its database connections while the interpreter still runs."""
        self.engine.dispose()
        self.storage.engine.dispose()

    def record_clean_exit(self) -> None:
        """Record exit code 0 in this worker's row, as it is about to exit cleanly."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    update(WorkerRow).where(WorkerRow.id == self.worker_id).values(exit_code=0)
                )
        except DB_ERRORS as exc:  # the service then records the worker lost
            log.warning("could not record the clean exit: %s", type(exc).__name__)

    def _training(self) -> bool:
        """Whether the running trial trained a batch (a resumed one: since it resumed)."""
        trainer = self.training.trainer
        if trainer is None:
            return False
        start = trainer.resumed_from.global_iteration if trainer.resumed_from else 0
        return trainer.state.global_iteration > start

    def _trained(self) -> None:
        """Count a trial that trains: this worker did not crash at start."""
        with self.engine.begin() as conn:
            conn.execute(
                update(WorkerRow)
                .where(WorkerRow.id == self.worker_id)
                .values(trials_trained=WorkerRow.trials_trained + 1)
            )

    def _db(self, what: str, action: Callable[[], T]) -> T:
        return with_db_retries(what, action, self.settings.db_retry_s)

    def run(self) -> None:
        """Run trials until the study stops, or its Optuna study is gone (deleted or
        renamed with another tool): then exit cleanly, and the service fails the study."""
        try:
            self._run()
        except (OptunaStudyGone, KeyError) as exc:  # Optuna: KeyError("Record does not exist.")
            if isinstance(exc, KeyError) and not self._db("checking the study", self._optuna_gone):
                raise
            log.warning(
                "the study's Optuna study was deleted or renamed outside the service; exiting"
            )

    def _run(self) -> None:
        stale_checked = -math.inf
        while True:
            # Trials of dead workers: checked at most once per heartbeat interval.
            if time.monotonic() - stale_checked >= self.settings.heartbeat_interval_s:
                self._db(
                    "failing stale trials",
                    lambda: self.stale.sweep(self.study, self.storage, self.row_id, self.optuna_id),
                )
                stale_checked = time.monotonic()
            with signals.sigterm.held():
                if not self._next_trial():
                    return
            signals.sigterm.raise_if_received()  # it came while the trial was recorded

    def _next_trial(self) -> bool:
        """Reserve a trial and run it; False when the study has none left for this worker."""
        slot = self._db("reserving a trial", lambda: self.reservations.reserve(self.trials_run))
        if isinstance(slot, Stop):
            log.info("%s; exiting", slot.reason)
            self.ranks.send(None)
            return False
        try:
            self.ranks.send((slot.number, slot.origin))
        except Exception:
            self.recorder.record(slot, Outcome(TrialState.FAIL, stopped=True))
            raise
        token = current_trial.set(slot.number)
        try:
            self.run_trial(slot)
        finally:
            current_trial.reset(token)
            self.trials_run += 1
        return True

    def run_trial(self, slot: Reservation) -> None:
        """Train the trial while its heartbeat runs, then record how it ended, once."""
        if slot.retries:
            log.info("trial started: retry %d of trial %d", slot.retries, slot.origin)
        else:
            log.info("trial started")
        with self.heartbeat.beating(slot.trial_id, slot.number):
            outcome = self._outcome(slot)
        self.recorder.record(slot, outcome)
        finished = outcome.state in (TrialState.COMPLETE, TrialState.PRUNED)
        if finished and not self.settings.keep_finished_checkpoints:
            # Its working checkpoints served resumes; a failed trial keeps them for its retry.
            checkpoints = trial_checkpoint_dir(self.settings.data_dir, self.name, slot.origin)
            shutil.rmtree(checkpoints, ignore_errors=True)
        if outcome.state == TrialState.COMPLETE and self.spec.artifacts.keep == "best_k":
            self._db("removing models outside the best", self._prune_models)
        if outcome.stopped:
            raise WorkerStopped("stopped during a trial")
        if outcome.state == TrialState.FAIL and self.ranks.several:
            # The other ranks may wait in a collective this one left: all restart together.
            raise RanksFailed("a trial failed while training on several ranks")

    def _outcome(self, slot: Reservation) -> Outcome:
        try:
            with signals.sigterm.held(False):
                values = self.training.train(slot.trial, slot.origin)
        except optuna.TrialPruned as exc:
            log.info("trial pruned: %s", exc)
            return Outcome(TrialState.PRUNED)
        except WorkerStopped:
            log.warning("worker stopped during the trial; marking it FAIL")
            return Outcome(TrialState.FAIL, stopped=True)
        except Exception:
            if self._db("checking the study", self._optuna_gone):
                raise OptunaStudyGone from None
            log.exception("trial failed")
            return Outcome(TrialState.FAIL)
        log.info("trial complete: %s", values)
        return Outcome(TrialState.COMPLETE, values)

    def _prune_models(self) -> None:
        from service.artifacts.retention import prune_models

        directions = [d.name.lower() for d in self.study.directions]
        with session_scope(self.sessions) as session:
            prune_models(
                session, self.optuna_id, directions, self.spec.artifacts, self.training.models
            )

    def _optuna_gone(self) -> bool:
        with self.engine.connect() as conn:
            return not conn.scalar(select(optuna_queries.study_exists_query(self.optuna_id)))
