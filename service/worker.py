"""The worker process: run a study's trials with helios until its budget is spent.

torch and helios are imported when the first trial starts, so an idle worker stays small.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from service import trials
from service.db import (
    WORKER_POOL,
    make_engine,
    make_session_factory,
    normalize_url,
    optuna_storage,
    session_scope,
    study_lock,
)
from service.models import StudyRow, StudyStatus, WorkerRow, WorkerState, seconds_since
from service.schemas import StudySpec
from service.settings import Settings
from service.space import build_pruner, build_sampler
from service.studies import get_study, sweep_stale_trials
from service.tasks import Task, get_task

__all__ = [
    "WorkerStopped",
    "run_worker",
    "trial_checkpoint_dir",
    "trial_seed",
    "with_db_retries",
]

log = logging.getLogger("helios_hpo.worker")
_current_trial: contextvars.ContextVar[int | None] = contextvars.ContextVar("trial", default=None)


# What a database outage looks like from SQLAlchemy and Optuna.
_DB_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)
T = TypeVar("T")


def with_db_retries(what: str, action: Callable[[], T], give_up_after_s: float) -> T:
    """Run ``action``, retrying with backoff (0.5 s to 8 s) while the database is away."""
    delay = 0.5
    give_up = time.monotonic() + give_up_after_s
    while True:
        try:
            return action()
        except _DB_ERRORS as exc:
            if time.monotonic() + delay > give_up:
                raise
            log.warning(
                "database unavailable while %s (%s); retrying in %.1f s",
                what,
                type(exc).__name__,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


class WorkerStopped(BaseException):
    """Raised in the worker's main thread by SIGTERM."""


def trial_checkpoint_dir(data_dir: Path, study: str, trial_number: int) -> Path:
    """Where trial ``trial_number`` of ``study`` keeps its checkpoints."""
    return data_dir / "studies" / study / "trials" / str(trial_number)


def trial_seed(params: dict[str, Any]) -> int:
    """A seed derived from the parameters: the same parameters train the same way."""
    return zlib.crc32(json.dumps(params, sort_keys=True, default=str).encode())


class _TrialFilter(logging.Filter):
    def __init__(self, worker_id: int) -> None:
        super().__init__()
        self.worker_id = worker_id

    def filter(self, record: logging.LogRecord) -> bool:
        number = _current_trial.get()
        record.worker = self.worker_id
        record.trial = "-" if number is None else number
        return True


def _configure_logging(worker_id: int) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_TrialFilter(worker_id))
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s worker=%(worker)s trial=%(trial)s %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


class _Heartbeat:
    """One thread for the worker's life: records the running trial's heartbeat every interval.

    A trial's first beat comes within one interval of its start (the stale sweep
    allows for that). Uses Optuna's public storage API.
    """

    def __init__(self, storage: optuna.storages.RDBStorage, interval_s: float) -> None:
        self._storage, self._interval_s = storage, interval_s
        self._trial: tuple[int, int] | None = None  # (trial id, number)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def beating(self, trial_id: int, number: int) -> Iterator[None]:
        """Beat for this trial while the block runs."""
        self._trial = (trial_id, number)
        try:
            yield
        finally:
            self._trial = None

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            trial = self._trial
            if trial is None:
                continue
            token = _current_trial.set(trial[1])  # the log line names the trial
            try:
                self._storage.record_heartbeat(trial[0])
            except Exception:
                log.warning("heartbeat failed; retrying", exc_info=True)
            finally:
                _current_trial.reset(token)


class _Worker:
    def __init__(self, study_name: str, worker_id: int, settings: Settings) -> None:
        self.name, self.worker_id, self.settings = study_name, worker_id, settings
        self.trials_run = 0
        self.engine = make_engine(settings.database_url, WORKER_POOL)
        self.sessions: sessionmaker[Session] = make_session_factory(self.engine)
        with session_scope(self.sessions) as session:
            row = get_study(session, study_name)
            self.row_id = row.id
            self.spec = StudySpec.model_validate(row.spec)
        # Trials failed here or found stale are queued again with the same parameters.
        self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(
            max_retry=self.spec.max_retries
        )
        self.storage = optuna_storage(
            settings.database_url,
            heartbeat_interval=settings.heartbeat_interval_s,
            grace_period=settings.heartbeat_grace_s,
            stale_trial_callback=self.retry,
            pool=WORKER_POOL,
        )
        self.study = optuna.load_study(
            study_name=study_name,
            storage=self.storage,
            sampler=build_sampler(self.spec.sampler, seed_offset=worker_id),
            pruner=build_pruner(self.spec.pruner),
        )
        self.optuna_id = self.storage.get_study_id_from_name(study_name)
        self.heartbeat = _Heartbeat(self.storage, settings.heartbeat_interval_s)
        self.task: Task = get_task(self.spec.task)
        self.metrics = [o.metric for o in self.spec.objectives or []]
        self.space = {
            name: param.model_dump(exclude_none=True)
            for name, param in (self.spec.search_space or {}).items()
        }

    def reserve(self) -> optuna.Trial | None:
        """A new trial while the study runs and its budget has room, else None.

        The study's status, n_trials and timeout are read live: pause, stop and
        PATCH take effect at the next trial.
        """
        with study_lock(self.engine, self.row_id):
            with self.engine.begin() as conn:  # Core, not the ORM: this runs once per trial
                if self.trials_run:
                    conn.execute(
                        update(WorkerRow)
                        .where(WorkerRow.id == self.worker_id)
                        .values(trials_run=self.trials_run)
                    )
                older = (
                    select(func.count())
                    .select_from(WorkerRow)
                    .where(
                        WorkerRow.study_id == self.row_id,
                        WorkerRow.state == WorkerState.RUNNING,
                        WorkerRow.id < self.worker_id,
                    )
                    .scalar_subquery()
                )
                # One round trip: the live spec, status and budget used.
                found = conn.execute(
                    select(
                        StudyRow.status,
                        StudyRow.spec,
                        StudyRow.created_at,
                        trials.budget_used_query(self.optuna_id).scalar_subquery(),
                        older,
                    ).where(StudyRow.id == self.row_id)
                ).one_or_none()
            if found is None:
                log.info("study was deleted; stopping")
                return None
            status, raw_spec, created_at, used, older_workers = found
            spec = StudySpec.model_validate(raw_spec)
            # Budget first: the supervisor may already have marked a spent study finished.
            if used >= spec.n_trials:
                log.info("budget of %s trials spent; exiting", spec.n_trials)
                return None
            if status != StudyStatus.RUNNING:
                log.info("study is %s; stopping", status)
                return None
            if older_workers >= spec.workers.count:
                log.info("workers.count is %s and older workers run; retiring", spec.workers.count)
                return None
            if spec.timeout_s is not None and seconds_since(created_at) >= spec.timeout_s:
                log.info("study timeout of %s s reached; stopping", spec.timeout_s)
                return None
            return self.study.ask()

    def _db(self, what: str, action: Callable[[], T]) -> T:
        return with_db_retries(what, action, self.settings.db_retry_s)

    def run(self) -> None:
        stale_checked = -math.inf
        while True:
            # Trials of dead workers: checked at most once per heartbeat interval.
            if time.monotonic() - stale_checked >= self.settings.heartbeat_interval_s:
                self._db(
                    "failing stale trials",
                    lambda: sweep_stale_trials(
                        self.engine,
                        self.sessions,
                        self.storage,
                        self.study,
                        self.settings.heartbeat_grace_s,
                    ),
                )
                stale_checked = time.monotonic()
            trial = self._db("reserving a trial", self.reserve)
            if trial is None:
                return
            token = _current_trial.set(trial.number)
            try:
                self.run_trial(trial)
            finally:
                _current_trial.reset(token)
                self.trials_run += 1

    def run_trial(self, trial: optuna.Trial) -> None:
        def lookup() -> tuple[int, list[int]]:
            with self.engine.connect() as conn:
                return trials.reserved_trial(conn, self.optuna_id, trial.number)

        trial_id, history = self._db("reading the trial", lookup)
        # A retry continues the checkpoints of the first trial of its series.
        origin = history[0] if history else trial.number
        if history:
            log.info("trial started: retry %d of trial %d", len(history), origin)
        else:
            log.info("trial started")
        with self.heartbeat.beating(trial_id, trial.number):
            try:
                values = self._train(trial, origin)
            except optuna.TrialPruned as exc:
                log.info("trial pruned: %s", exc)
                self._tell(trial, state=optuna.trial.TrialState.PRUNED)
            except WorkerStopped:
                log.warning("worker stopped during the trial; marking it FAIL for a retry")
                self._fail(trial, trial_id)
                raise
            except Exception:
                log.exception("trial failed")
                self._fail(trial, trial_id)
            else:
                log.info("trial complete: %s", values)
                self._tell(trial, values=values)

    def _fail(self, trial: optuna.Trial, trial_id: int) -> None:
        """FAIL the trial and queue a retry with the same parameters (up to max_retries)."""
        # Under the study lock: no reservation may take the freed slot before the retry.
        with contextlib.ExitStack() as locked:
            self._db(
                "taking the study's lock",
                lambda: locked.enter_context(study_lock(self.engine, self.row_id)),
            )
            if self._tell(trial, state=optuna.trial.TrialState.FAIL):
                frozen = self._db("reading the trial", lambda: self.storage.get_trial(trial_id))
                self._db("queueing a retry", lambda: self.retry(self.study, frozen))

    def _tell(self, trial: optuna.Trial, **kwargs: Any) -> bool:
        try:
            self._db("recording the result", lambda: self.study.tell(trial, **kwargs))
        except (RuntimeError, ValueError) as exc:  # e.g. already failed as stale
            log.warning("could not record the trial's result: %s", exc)
            return False
        return True

    def _train(self, trial: optuna.Trial, origin: int) -> list[float]:
        import torch

        from helios import CUDAPlugin, Plugin, Trainer
        from helios.plugins.optuna import OptunaPlugin

        metric = self.metrics[0] if len(self.metrics) == 1 else self.metrics
        plugin = OptunaPlugin(trial, metric, checkpoint_trial=origin)
        params = {**self.task.default_params, **plugin.suggest_all(self.space)}
        run = self.task.build(params, dict(self.spec.task_args))
        plugins: list[Plugin] = [plugin]
        if torch.cuda.is_available():
            plugins.append(CUDAPlugin())
        if not self.trials_run:
            device = torch.cuda.get_device_name() if torch.cuda.is_available() else "the CPU"
            log.info("training on %s", device)
        trainer_args = {"chkpt_frequency": 1, "keep_last_checkpoints": 1, **run.trainer_args}
        trainer = Trainer(
            **trainer_args,
            chkpt_root=trial_checkpoint_dir(self.settings.data_dir, self.name, origin),
            seed=trial_seed(params),
            enable_progress_bar=False,
            plugins=plugins,
        )
        trainer.fit(run.model, run.datamodule)
        if trainer.resumed_from:  # a retry that continued from a checkpoint says so
            start = trainer.resumed_from.global_epoch
            trial.set_user_attr("resumed_from_epoch", start)
            trial.set_user_attr("epochs_trained", trainer.state.global_epoch - start)
        plugin.check_pruned()
        missing = [m for m in self.metrics if m not in run.model.metrics]
        if missing:
            raise KeyError(f"the model produced no {missing}; metrics: {sorted(run.model.metrics)}")
        return [float(run.model.metrics[m]) for m in self.metrics]


def _stop(signum: int, frame: FrameType | None) -> None:
    raise WorkerStopped(f"signal {signum}")


def lower_priority(nice: int) -> int:
    """Lower this process's CPU priority by ``nice``; the resulting niceness.

    Under Linux's autogroup scheduling a niceness weighs only against processes of
    the same session, and a local worker leads its own: its session's group is
    lowered as well, or eight workers would still get eight shares to the
    service's one. (A worker started from a shell leaves the shell's group alone.)
    """
    value = os.nice(nice)
    if os.getsid(0) == os.getpid():
        with contextlib.suppress(OSError):  # no autogroups (other kernels, some containers)
            Path("/proc/self/autogroup").write_text(f"{value}\n")
    return value


def run_worker(study_name: str, worker_id: int, settings: Settings) -> int:
    """Run trials of ``study_name`` until its budget is spent or it stops; the exit code."""
    lower_priority(settings.worker_nice)
    _configure_logging(worker_id)
    # Heartbeats and fail_stale_trials are experimental in Optuna; we rely on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Workers keep their trials' heartbeats themselves (ask/tell, not Study.optimize).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    signal.signal(signal.SIGTERM, _stop)
    log.info(
        "worker %s for study %s on %s, CUDA_VISIBLE_DEVICES=%r",
        worker_id,
        study_name,
        normalize_url(settings.database_url).render_as_string(hide_password=True),
        os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    )
    try:
        worker = with_db_retries(
            "starting", lambda: _Worker(study_name, worker_id, settings), settings.db_retry_s
        )
        try:
            worker.run()
        finally:
            worker.heartbeat.close()
    except WorkerStopped:
        log.info("stopped by SIGTERM")
        return 0
    return 0
