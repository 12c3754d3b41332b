"""The worker process: run a study's trials with helios until its budget is spent.

torch and helios are imported when the first trial starts, so an idle worker stays small.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import warnings

import optuna

from service.settings import WORKER_COMMAND, Settings
from service.spec.models import StudySpec, UnreadableSpecError
from service.storage.db import (
    WORKER_POOL,
    make_engine,
    make_session_factory,
    normalize_url,
    session_scope,
    with_db_retries,
)
from service.studies.reads import get_study
from service.trials.outcome import fail_study_now
from service.worker.log_lines import configure_logging
from service.worker.loop import Worker
from service.worker.rank_processes import run_ranks
from service.worker.ranks import RanksFailed, follow, join_ranks, log_statements, world_size
from service.worker.signals import WorkerStopped, lower_priority, sigterm

__all__ = ["run_worker"]

log = logging.getLogger(__name__)


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
    signal.signal(signal.SIGTERM, sigterm.handle)
    rank = int(os.environ["RANK"]) if world_size() > 1 else None
    configure_logging(worker_id, rank)
    if rank is not None:
        join_ranks(settings)
        if rank > 0:
            return _leave(follow(study_name, settings), rank)
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
            "starting", lambda: Worker(study_name, worker_id, settings), settings.db_retry_s
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
        log_statements(rank)
        # A connection that a SIGTERM left checked out mid-query is closed now, while the
        # interpreter runs: at its shutdown the close printed a traceback into the log.
        gc.collect()
    return _leave(code, rank)


def _leave(code: int, rank: int | None) -> int:
    """``code``; a rank stopped by SIGTERM exits at once instead. Stopped mid-trial, the
    ranks' collectives may be out of step, and the process group's barrier at exit
    would wait for the peer until the collective timeout (seen under load: both ranks
    logged their stop, then waited until killed)."""
    if rank is not None and sigterm.reason is not None:
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
