"""The worker process: run a study's trials with helios until its budget is spent.

torch and helios are imported when the first trial starts, so an idle worker stays small.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import gc
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import optuna
from optuna.trial import TrialState
from sqlalchemy import Engine, event, select, update
from sqlalchemy.orm import Session, sessionmaker

from service import optuna_tables
from service.conditions import suggest_space
from service.db import (
    DB_ERRORS,
    WORKER_POOL,
    make_engine,
    make_session_factory,
    normalize_url,
    optuna_storage,
    session_scope,
    with_db_retries,
)
from service.models import WorkerRow
from service.outcome import Outcome, Recorder, fail_study_now
from service.ranks import run_ranks
from service.reservation import OptunaStudyGone, Reservation, Reservations, Stop
from service.schemas import StudySpec, UnreadableSpecError
from service.settings import WORKER_COMMAND, Settings
from service.space import build_pruner, build_sampler
from service.stale import StaleTrials
from service.studies import get_study
from service.tasks import Task, TaskRun, get_task

if TYPE_CHECKING:
    from helios import Trainer
    from service.artifacts import ModelStore

__all__ = [
    "WorkerStopped",
    "run_worker",
    "trial_checkpoint_dir",
    "trial_seed",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_current_trial: contextvars.ContextVar[int | None] = contextvars.ContextVar("trial", default=None)


class WorkerStopped(BaseException):
    """Raised in the worker's main thread by SIGTERM."""


class _Sigterm:
    """SIGTERM raises WorkerStopped in the main thread at once, except while ``held``: from
    a trial's reservation until its training starts, and from the end of its training
    until it is recorded. There it waits for the trial to start training (the trial then
    fails, for a retry) or to be recorded, so that no trial is left RUNNING."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._held = False

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.reason = f"signal {signum}"
        if not self._held:
            raise WorkerStopped(self.reason)

    def raise_if_received(self) -> None:
        if self.reason is not None:
            raise WorkerStopped(self.reason)

    @contextlib.contextmanager
    def held(self, held: bool = True) -> Iterator[None]:
        """SIGTERM waits in the block (``held=False``: it raises in it, at once if one came)."""
        before, self._held = self._held, held
        try:
            if not held:
                self.raise_if_received()
            yield
        finally:
            self._held = before


_sigterm = _Sigterm()


class RanksFailed(Exception):
    """A rank of a several-rank worker failed: every rank exits, and the worker with them."""


class _Ranks:
    """Rank 0's side of a several-rank worker: it alone talks to the database and sends
    the others the study's spec once, then each trial's (number, origin), then None."""

    def __init__(self, stored_spec: dict[str, Any]) -> None:
        self.several = _world_size() > 1
        self.send(stored_spec)

    def send(self, message: object) -> None:
        if self.several:
            from helios import distributed

            distributed.broadcast_object(message)


def _world_size() -> int:
    """How many ranks this worker runs as (its parent sets WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


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


def _configure_logging(worker_id: int, rank: int | None = None) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_TrialFilter(worker_id))
    where = "worker=%(worker)s" if rank is None else f"worker=%(worker)s rank={rank}"
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s {where} trial=%(trial)s %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


class _Heartbeat:
    """One thread for the worker's life: records the running trial's heartbeat every interval.

    A trial's first beat is sent as it is reserved (``Reservations``); this thread sends
    the next ones. Uses Optuna's public storage API.
    """

    def __init__(
        self,
        storage: optuna.storages.RDBStorage,
        interval_s: float,
        training: Callable[[], bool],
        on_training: Callable[[], None],
    ) -> None:
        self._storage, self._interval_s = storage, interval_s
        # Once per trial, at the first beat after it trained a batch: the worker works.
        self._training, self._on_training = training, on_training
        self._trial: tuple[int, int] | None = None  # (trial id, number)
        self._told: int | None = None  # the trial id on_training was called for
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
        """Stop beating; wait for a beat in progress (which the interpreter's exit would
        cut short while it tears down the modules the beat uses)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            trial = self._trial
            if trial is None:
                continue
            token = _current_trial.set(trial[1])  # the log line names the trial
            try:
                self._storage.record_heartbeat(trial[0])
                if self._told != trial[0] and self._training():
                    self._told = trial[0]
                    self._on_training()
            except Exception as exc:  # the database is down, or the trial was deleted
                log.warning("heartbeat failed (%s: %s); retrying", type(exc).__name__, exc)
            finally:
                _current_trial.reset(token)


class _Training:
    """What every rank needs to train a study's trials; rank 0 alone holds the trial."""

    def __init__(self, study_name: str, spec: StudySpec, settings: Settings) -> None:
        self.name, self.spec, self.settings = study_name, spec, settings
        self.task: Task = get_task(spec.task)
        self.metrics = [o.metric for o in spec.objectives or []]
        self.space = {
            name: param.model_dump(exclude_none=True)
            for name, param in (spec.search_space or {}).items()
        }
        self.trainer: Trainer | None = None  # the trial's, while it trains
        self._models: ModelStore | None = None
        self.trials_started = 0

    def train(self, trial: optuna.Trial | None, origin: int) -> list[float]:
        """Train one trial (``trial`` None on ranks other than 0); its objective values.

        Raises:
            optuna.TrialPruned: on every rank, when rank 0's pruner stopped it.
        """
        import torch

        from helios import CUDAPlugin, Plugin, Trainer
        from helios.plugins.optuna import OptunaPlugin

        metric = self.metrics[0] if len(self.metrics) == 1 else self.metrics
        plugin = OptunaPlugin(trial, metric, checkpoint_trial=origin)
        plugins: list[Plugin] = [plugin]
        if torch.cuda.is_available():
            plugins.append(CUDAPlugin())
        if not self.trials_started:
            device = torch.cuda.get_device_name() if torch.cuda.is_available() else "the CPU"
            log.info("training on %s", device)
        self.trials_started += 1
        # Rank 0's suggestions reach the others through the process group it joined.
        params = {**self.task.default_params, **suggest_space(plugin.suggest, self.space)}
        run = self.task.build(params, dict(self.spec.task_args))
        trainer_args = {"chkpt_frequency": 1, "keep_last_checkpoints": 1, **run.trainer_args}
        trainer = Trainer(
            **trainer_args,
            chkpt_root=trial_checkpoint_dir(self.settings.data_dir, self.name, origin),
            seed=trial_seed(params),
            enable_progress_bar=False,
            plugins=plugins,
        )
        self.trainer = trainer
        try:
            trainer.fit(run.model, run.datamodule)  # raises optuna.TrialPruned when pruned
        except optuna.TrialPruned:
            if trial is not None:
                _note_resume(trial, trainer)
            raise
        finally:
            self.trainer = None
        if trial is None:
            return []
        _note_resume(trial, trainer)
        constrained = [c.metric for c in self.spec.constraints]
        missing = [m for m in [*self.metrics, *constrained] if m not in run.model.metrics]
        if missing:
            raise KeyError(f"the model produced no {missing}; metrics: {sorted(run.model.metrics)}")
        # Before the trial is told: Optuna's samplers and best trial read these.
        for constraint in self.spec.constraints:
            value = float(run.model.metrics[constraint.metric])
            for key, violation in constraint.violations(value).items():
                trial.set_constraint(key, violation)
        values = [float(run.model.metrics[m]) for m in self.metrics]
        if self.spec.artifacts.keep != "none":
            self._store_model(trial, run, params, values)
        return values

    @property
    def models(self) -> ModelStore:
        """Where models are stored (made at first use: an S3 client costs a little)."""
        if self._models is None:
            from service.artifacts import ModelStore

            self._models = ModelStore.of(self.settings)
        return self._models

    def _store_model(
        self, trial: optuna.Trial, run: TaskRun, params: dict[str, Any], values: list[float]
    ) -> None:
        """The trained networks, as an artifact of the trial (before it is told)."""
        from service.artifacts import save_model

        about = {
            "task": self.task.name,
            "study": self.name,
            "trial": trial.number,
            "params": params,
            "task_args": {**self.task.default_task_args, **self.spec.task_args},
            "values": values,
            "metrics": {
                k: float(v) for k, v in run.model.metrics.items() if isinstance(v, int | float)
            },
        }
        modules = {name: m.state_dict() for name, m in run.model.modules().items()}
        artifact_id = save_model(trial, modules, about, self.models)
        log.info("model stored: artifact %s", artifact_id)


class _Worker:
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
        self.training = _Training(study_name, self.spec, settings)
        self.heartbeat = _Heartbeat(
            self.storage, settings.heartbeat_interval_s, self._training, self._trained
        )
        # On several ranks, the others learn from this one what to train.
        self.ranks = _Ranks(stored)

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
            with _sigterm.held():
                if not self._next_trial():
                    return
            _sigterm.raise_if_received()  # it came while the trial was recorded

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
        token = _current_trial.set(slot.number)
        try:
            self.run_trial(slot)
        finally:
            _current_trial.reset(token)
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
            with _sigterm.held(False):
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
        from service.artifacts import prune_models

        directions = [d.name.lower() for d in self.study.directions]
        with session_scope(self.sessions) as session:
            prune_models(
                session, self.optuna_id, directions, self.spec.artifacts, self.training.models
            )

    def _optuna_gone(self) -> bool:
        with self.engine.connect() as conn:
            return not conn.scalar(select(optuna_tables.study_exists_query(self.optuna_id)))


def _note_resume(trial: optuna.Trial, trainer: Trainer) -> None:
    """A retry that continued from a checkpoint says so."""
    if trainer.resumed_from:
        start = trainer.resumed_from.epochs_completed
        trial.set_user_attr("resumed_from_epoch", start)
        trial.set_user_attr("epochs_trained", trainer.state.epochs_completed - start)


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
    """Run trials of ``study_name`` until its budget is spent or it stops; the exit code.

    A study whose trials train on several ranks runs its worker again as that many
    ranks, children of this process (its pid stays the launcher's): rank 0 is this
    function's worker, the other ranks follow it.
    """
    lower_priority(settings.worker_nice)
    # Heartbeats and fail_stale_trials are experimental in Optuna; we rely on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # Workers keep their trials' heartbeats themselves (ask/tell, not Study.optimize).
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
    signal.signal(signal.SIGTERM, _sigterm.handle)
    rank = int(os.environ["RANK"]) if _world_size() > 1 else None
    _configure_logging(worker_id, rank)
    if rank is not None:
        _join_ranks(settings)
        if rank > 0:
            return _leave(_follow(study_name, settings), rank)
    log.info(
        "worker %s for study %s on %s, CUDA_VISIBLE_DEVICES=%r",
        worker_id,
        study_name,
        normalize_url(settings.database_url).render_as_string(hide_password=True),
        os.environ.get("CUDA_VISIBLE_DEVICES", ""),
    )
    code = 0
    try:
        if rank is None:
            ranks = with_db_retries(
                "reading the spec",
                lambda: _ranks_per_trial(study_name, settings),
                settings.db_retry_s,
            )
            if ranks > 1:
                log.info("training each trial on %d ranks", ranks)
                argv = [*WORKER_COMMAND, "--study", study_name, "--worker-id", str(worker_id)]
                return run_ranks(argv, ranks, settings.worker_stop_timeout_s)
        worker = with_db_retries(
            "starting", lambda: _Worker(study_name, worker_id, settings), settings.db_retry_s
        )
        try:
            worker.run()
        except WorkerStopped:
            log.info("stopped by SIGTERM")
        except RanksFailed as exc:
            log.error("%s; every rank exits, and the worker restarts", exc)
            code = 1
        except UnreadableSpecError as exc:  # its spec changed since it started
            _refuse(settings, study_name, exc)
        finally:
            worker.heartbeat.close()
        try:
            if not code:
                # A service that did not start this process cannot read its exit status.
                worker.record_clean_exit()
        finally:
            worker.close()
    except WorkerStopped:
        log.info("stopped by SIGTERM")
    except UnreadableSpecError as exc:
        _refuse(settings, study_name, exc)
    finally:
        # Exiting: a stop that comes now must not raise inside the interpreter's shutdown.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _log_statements(rank)
        # A connection that a SIGTERM left checked out mid-query is closed now, while the
        # interpreter runs: at its shutdown the close printed a traceback into the log.
        gc.collect()
    return _leave(code, rank)


def _leave(code: int, rank: int | None) -> int:
    """``code``; a rank stopped by SIGTERM exits at once instead. Stopped mid-trial, the
    ranks' collectives may be out of step, and the process group's barrier at exit
    would wait for the peer until the collective timeout (seen under load: both ranks
    logged their stop, then waited until killed)."""
    if rank is not None and _sigterm.reason is not None:
        logging.shutdown()
        os._exit(code)
    return code


def _ranks_per_trial(study_name: str, settings: Settings) -> int:
    engine = make_engine(settings.database_url, WORKER_POOL)
    try:
        with session_scope(make_session_factory(engine)) as session:
            stored = get_study(session, study_name).spec
    finally:
        engine.dispose()
    return StudySpec.from_stored(stored).workers.ranks


def _join_ranks(settings: Settings) -> None:
    """Join the ranks' process group on this rank's device, every collective bounded by
    ``ddp_timeout_s``; count this process's database statements from here on."""
    import torch

    from helios import distributed

    event.listen(Engine, "before_cursor_execute", _count_statement)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    distributed.init_process_group(device, dt.timedelta(seconds=settings.ddp_timeout_s))


_statements = 0


def _count_statement(*args: object) -> None:
    global _statements  # noqa: PLW0603 (one counter per process)
    _statements += 1


def _log_statements(rank: int | None) -> None:
    if rank is not None:
        log.info("rank %d made %d database statements", rank, _statements)


def _follow(study_name: str, settings: Settings) -> int:
    """A rank other than 0: train what rank 0 sends, never touching the database."""
    from helios import distributed

    def receive() -> Any:
        return distributed.broadcast_object(None)

    code = 0
    try:
        training = _Training(study_name, StudySpec.from_stored(receive()), settings)
        while (message := receive()) is not None:
            number, origin = message
            token = _current_trial.set(number)
            try:
                training.train(None, origin)
            except optuna.TrialPruned:
                pass
            except Exception:
                log.exception("trial failed on this rank; every rank exits")
                code = 1
                break
            finally:
                _current_trial.reset(token)
    except WorkerStopped:
        log.info("stopped by SIGTERM")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _log_statements(int(os.environ["RANK"]))
    return code


def _refuse(settings: Settings, study_name: str, error: UnreadableSpecError) -> None:
    """Fail a study whose stored spec this worker cannot run: every worker of this version
    would refuse it, so restarting it would only loop."""
    reason = (
        f"a worker cannot run the study's spec ({error}); its version is older than the "
        "service's: run workers of the service's version (workers.image)"
    )
    log.error("%s", reason)
    engine = make_engine(settings.database_url, WORKER_POOL)
    try:
        with_db_retries(
            "failing the study",
            lambda: fail_study_now(engine, study_name, reason),
            settings.db_retry_s,
        )
    finally:
        engine.dispose()
