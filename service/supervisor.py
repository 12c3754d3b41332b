"""Keeps each running study's workers alive and ends studies whose budget is spent."""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import threading

import optuna
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from service import trials
from service.db import after_commit, session_scope
from service.launchers.base import LOST, Launcher
from service.launchers.docker import DockerLauncher
from service.launchers.gpus import Lease
from service.launchers.local import LocalLauncher, worker_log_path
from service.logs import log_tail
from service.models import StudyRow, StudyStatus, WorkerRow, WorkerState, seconds_since
from service.schemas import StudySpec
from service.studies import sweep_stale_trials

__all__ = ["Supervisor", "restart_backoff_s"]

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 60.0


def _lease(worker: WorkerRow) -> Lease:
    return Lease(worker.host, tuple(int(g) for g in worker.gpus.split(",") if g))


def restart_backoff_s(failures: int) -> float:
    """Seconds to wait before restarting after ``failures`` crashes in a row: 1, 2, 4, ... 60."""
    return min(2.0 ** (failures - 1), MAX_BACKOFF_S) if failures > 0 else 0.0


def _crash_streak(workers: list[WorkerRow]) -> list[WorkerRow]:
    """The newest workers, newest first, that failed before finishing any trial.

    A worker that trained trials and was then killed (OOM, SIGKILL, host loss)
    breaks the streak: that is not a crash loop.
    """
    streak = []
    for worker in sorted(workers, key=lambda w: w.id, reverse=True):
        if worker.state == WorkerState.RUNNING:
            continue
        if not worker.crashed:
            break
        streak.append(worker)
    return streak


class Supervisor:
    """A thread that reconciles studies with their worker processes.

    Each tick: reap exited workers, end studies whose budget, timeout or
    failure limit is reached, start the workers a running study lacks, and
    stop the workers of ended studies.
    """

    def __init__(
        self,
        engine: Engine,
        session_factory: sessionmaker[Session],
        storage: optuna.storages.RDBStorage,
        launcher: LocalLauncher,
        *,
        docker: DockerLauncher | None = None,
        interval_s: float,
        stop_timeout_s: float,
        grace_s: float,
    ) -> None:
        self._engine = engine
        self._sessions = session_factory
        self._storage = storage
        self._launcher = launcher
        launcher.on_exit = self.wake  # a worker's exit is reconciled at once
        self._docker = docker
        self._orphan_hosts: set[str] | None = None  # None: not adopted yet
        self._interval_s = interval_s
        self._stop_timeout_s = stop_timeout_s
        self._grace_s = grace_s
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the supervising thread."""
        self._thread = threading.Thread(target=self._run, name="helios-hpo-supervisor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the thread; workers keep running and are adopted by the next service."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def wake(self) -> None:
        """Tick now instead of at the next interval."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("supervisor tick failed; retrying next interval")
            self._wake.wait(self._interval_s)
            self._wake.clear()

    def _launcher_of(self, worker: WorkerRow) -> Launcher:
        if worker.launcher == "docker":
            if self._docker is None:
                raise RuntimeError(
                    f"worker {worker.id} runs in Docker, but HELIOS_HPO_DOCKER_HOSTS is empty"
                )
            return self._docker
        return self._launcher

    def _adopt(self, session: Session) -> None:
        """After a (re)start: running workers hold their GPUs again (once), and containers
        of no running worker are removed (until every Docker host was reached)."""
        running = session.scalars(
            select(WorkerRow).where(WorkerRow.state == WorkerState.RUNNING)
        ).all()
        if self._orphan_hosts is None:
            for worker in running:
                if worker.launcher == "docker" and self._docker is None:
                    continue  # no Docker hosts configured: nothing to lease from
                self._launcher_of(worker).scheduler.restore(_lease(worker))
            self._orphan_hosts = set(self._docker.hosts) if self._docker is not None else set()
        if self._docker is not None and self._orphan_hosts:
            containers = {w.id for w in running if w.launcher == "docker"}
            self._orphan_hosts = self._docker.remove_orphans(containers, self._orphan_hosts)

    def tick(self) -> None:
        """One reconciliation pass over every study with live workers or a running status."""
        if self._orphan_hosts is None or self._orphan_hosts:
            with session_scope(self._sessions) as session:
                self._adopt(session)
        with session_scope(self._sessions) as session:
            live = select(WorkerRow.study_id).where(WorkerRow.state == WorkerState.RUNNING)
            rows = session.scalars(
                select(StudyRow).where(
                    (StudyRow.status == StudyStatus.RUNNING) | StudyRow.id.in_(live)
                )
            ).all()
            for row in rows:
                self._reconcile(session, row)

    def _reconcile(self, session: Session, row: StudyRow) -> None:
        self._reap(row)
        spec = StudySpec.model_validate(row.spec)
        study_id = trials.optuna_study_id(session, row.name)
        if study_id is None:
            self._end(row, StudyStatus.FAILED, "its Optuna study was deleted outside the service")
        elif row.status == StudyStatus.RUNNING:
            self._check_running(session, row, spec, study_id)
        running = [w for w in row.workers if w.state == WorkerState.RUNNING]
        if row.status in (StudyStatus.STOPPED, StudyStatus.FAILED):
            # Release the database before waiting on processes that write to it.
            session.commit()
            for worker in running:
                self._stop_worker(worker)
            if study_id is not None:  # through Optuna's connection, after our commit
                after_commit(session, functools.partial(self._fail_running_trials, row.name))
        elif row.status == StudyStatus.RUNNING and study_id is not None:
            if not running:  # no worker to notice its stale trials: do it here, after our commit
                after_commit(session, functools.partial(self._fail_stale_trials, row.name))
            self._start_missing(session, row, spec, study_id, len(running))
        # A finished study's workers find the budget spent and exit by themselves.

    def _reap(self, row: StudyRow) -> None:
        for worker in row.workers:
            if worker.state != WorkerState.RUNNING or worker.pid is None:
                continue
            try:
                code = self._launcher_of(worker).exit_code(
                    worker.id, worker.pid, worker.pid_start_time
                )
            except Exception as exc:  # e.g. its Docker host is unreachable: ask again later
                log.warning("cannot tell whether worker %s runs: %s", worker.id, exc)
                continue
            if code is None:
                continue
            worker.exit_code = code
            if code == 0:
                worker.state = WorkerState.EXITED
            elif code == LOST:  # not our child: its exit status cannot be read
                worker.state = WorkerState.LOST
            else:
                worker.state = WorkerState.FAILED
            worker.ended_at = dt.datetime.now(dt.UTC)
            self._ended(worker)
            log.info("worker %s of %s exited with %s", worker.id, row.name, code)

    def _check_running(
        self, session: Session, row: StudyRow, spec: StudySpec, study_id: int
    ) -> None:
        counts = trials.trial_counts(session, study_id)
        done = counts["COMPLETE"] + counts["PRUNED"]
        if done >= spec.n_trials:
            self._end(row, StudyStatus.FINISHED, f"{done} of {spec.n_trials} trials finished")
        elif (
            spec.max_failed_trials is not None
            and (failed := trials.unretried_failures(session, study_id)) > spec.max_failed_trials
        ):
            self._end(
                row,
                StudyStatus.FAILED,
                f"{failed} trials failed without a retry left "
                f"(max_failed_trials={spec.max_failed_trials}); see the worker logs",
            )
        elif spec.timeout_s is not None and seconds_since(row.created_at) >= spec.timeout_s:
            self._end(row, StudyStatus.FINISHED, f"timeout of {spec.timeout_s} s reached")
        else:
            streak = _crash_streak(row.workers)
            if len(streak) > spec.max_restarts:
                tail = "\n".join(log_tail(streak[0].log_path, 20))
                self._end(
                    row,
                    StudyStatus.FAILED,
                    f"{len(streak)} workers in a row failed before finishing a trial "
                    f"(max_restarts={spec.max_restarts}); last worker's log:\n{tail}",
                )

    def _start_missing(
        self, session: Session, row: StudyRow, spec: StudySpec, study_id: int, running: int
    ) -> None:
        missing = spec.workers.count - running
        if missing <= 0:
            return  # nothing to start: no need to read the budget or the trials every tick
        if trials.budget_used(session, study_id) >= spec.n_trials:
            return  # the running workers finish the last trials
        streak = _crash_streak(row.workers)
        if streak and streak[0].ended_at is not None:
            wait_s = restart_backoff_s(len(streak))
            if seconds_since(streak[0].ended_at) < wait_s:
                return  # back off before restarting a crashing worker
        if spec.workers.launcher == "local":
            launcher: Launcher = self._launcher
            if not trials.any_started(session, study_id):
                # One worker until the study's first trial starts: workers starting together
                # on one host share its cores, and the first trial would wait for all of them.
                missing = min(missing, 1 - running)
        elif self._docker is not None:
            launcher = self._docker
        else:
            self._end(
                row,
                StudyStatus.FAILED,
                "workers.launcher is docker, but HELIOS_HPO_DOCKER_HOSTS is empty on this service",
            )
            return
        for _ in range(missing):
            if not self._start_worker(session, row, spec, launcher):
                return

    def _start_worker(
        self, session: Session, row: StudyRow, spec: StudySpec, launcher: Launcher
    ) -> bool:
        """Start one worker; False when the study must wait or the start failed."""
        lease = launcher.scheduler.lease(spec.workers.gpus_per_worker)
        if lease is None:
            log.info("study %s waits for %s free GPUs", row.name, spec.workers.gpus_per_worker)
            return False
        worker = WorkerRow(
            study_id=row.id,
            launcher=launcher.name,
            host=lease.host,
            log_path="",
            gpus=",".join(map(str, lease.gpus)),
        )
        row.workers.append(worker)
        session.flush()
        try:
            handle = launcher.start(row.name, worker.id, lease, spec.workers.image)
        except Exception as exc:
            # Counted like a crash: restarts back off, max_restarts fails the study.
            launcher.scheduler.release(lease)
            path = worker_log_path(self._launcher.data_dir, row.name, worker.id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"could not start a {launcher.name} worker on {lease.host}: {exc}\n")
            worker.state, worker.exit_code, worker.log_path = WorkerState.FAILED, -1, str(path)
            worker.ended_at = dt.datetime.now(dt.UTC)
            session.commit()
            log.warning("worker %s of %s did not start: %s", worker.id, row.name, exc)
            return False
        worker.pid, worker.pid_start_time = handle.pid, handle.pid_start_time
        worker.log_path = str(handle.log_path)
        # Committed at once: a worker that exists must have its row.
        session.commit()
        log.info(
            "started worker %s (pid %s) on %s for %s", worker.id, handle.pid, lease.host, row.name
        )
        return True

    def _ended(self, worker: WorkerRow) -> None:
        """Drop an ended worker from its launcher; its GPUs are free again."""
        launcher = self._launcher_of(worker)
        launcher.forget(worker.id)
        launcher.scheduler.release(_lease(worker))

    def _stop_worker(self, worker: WorkerRow) -> None:
        if worker.pid is not None:
            launcher = self._launcher_of(worker)
            launcher.stop(worker.id, worker.pid, worker.pid_start_time, self._stop_timeout_s)
            worker.exit_code = launcher.exit_code(worker.id, worker.pid, worker.pid_start_time)
            self._ended(worker)
        worker.state = WorkerState.STOPPED
        worker.ended_at = dt.datetime.now(dt.UTC)

    def _fail_stale_trials(self, name: str) -> None:
        """Fail trials whose worker died; the storage's callback queues their retries."""
        study = optuna.load_study(study_name=name, storage=self._storage)
        sweep_stale_trials(self._engine, self._sessions, self._storage, study, self._grace_s)

    def _fail_running_trials(self, name: str) -> None:
        storage = self._storage
        study_id = storage.get_study_id_from_name(name)
        for trial in storage.get_all_trials(
            study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        ):
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            with contextlib.suppress(RuntimeError):  # it finished in the meantime
                storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)

    @staticmethod
    def _end(row: StudyRow, status: StudyStatus, reason: str) -> None:
        row.status = status
        row.status_reason = reason
        row.finished_at = dt.datetime.now(dt.UTC)
        log.info("study %s %s: %s", row.name, status, reason)
