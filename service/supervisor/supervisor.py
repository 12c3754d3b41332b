"""SUPERVISOR_DOC"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import optuna
from sqlalchemy import Engine, and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from service.artifacts.retention import enforce_budget
from service.artifacts.store import ModelStore, artifact_dir
from service.launchers import (
    LOST,
    MISCONFIGURED,
    UNREACHABLE,
    Launcher,
    LauncherUnavailable,
    Lease,
    WorkerHandle,
    WorkerLaunch,
    registered,
    worker_log_path,
)
from service.launchers.logs import log_tail
from service.spec.models import StudySpec
from service.storage import optuna_queries, optuna_tables
from service.storage.db import session_scope
from service.storage.rows import LIVE_STATES, StudyRow, StudyStatus, WorkerRow, WorkerState
from service.studies import lifecycle
from service.studies.operations import remove_unfinished
from service.supervisor.plan import Held, Plan, Seen, utc_now
from service.trials.stale import StaleTrials

__all__ = ["Supervisor"]

log = logging.getLogger(__name__)


class Supervisor:
    """A thread that reconciles studies with their workers (see the module's docstring).

    Args:
        launchers: the launchers this service runs, by name.
        interval_s: seconds between ticks (a worker's exit or a request wakes it sooner).
        stop_timeout_s: how long a stopped worker has to exit before SIGKILL.
        grace_s: how long a trial may go without a heartbeat.
        data_dir: where workers log.
        checkpoint_budget_bytes: the most bytes checkpoints and stored models may take.
        models: where stored models are (default: the data directory's folder).
    """

    def __init__(
        self,
        engine: Engine,
        session_factory: sessionmaker[Session],
        storage: optuna.storages.RDBStorage,
        launchers: Mapping[str, Launcher],
        *,
        interval_s: float,
        stop_timeout_s: float,
        grace_s: float,
        data_dir: Path,
        outage_s: float = 300.0,
        checkpoint_budget_bytes: int | None = None,
        models: ModelStore | None = None,
    ) -> None:
        self._sessions = session_factory
        self._storage = storage
        self._launchers = dict(launchers)
        for launcher in self._launchers.values():
            launcher.on_exit = self.wake  # a worker's exit is reconciled at once
        self._interval_s = interval_s
        self._stop_timeout_s = stop_timeout_s
        self._data_dir = data_dir
        self._outage_s = outage_s
        self._budget = checkpoint_budget_bytes
        self._models = models or ModelStore(folder=artifact_dir(data_dir))
        self._budget_checked = -math.inf
        self._stale = StaleTrials(engine, grace_s)
        self._adopted = False
        self._strays_left = set(self._launchers)  # launchers whose strays are not removed yet
        self._held: dict[int, Held] = {}
        self._unrecorded: dict[int, WorkerHandle] = {}  # started, handle not committed yet
        self._kill_at: dict[int, float] = {}  # signalled to stop: when to SIGKILL
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

    def tick(self) -> None:
        """One pass: every study that needs it, each in its own unit of work."""
        if not self._adopted:
            self.adopt()
        for row_id, name in self._due():
            try:
                self._reconcile(row_id)
            except Exception:
                log.exception("supervising study %s failed; trying again next tick", name)
        self._let_go()
        if self._strays_left:
            self._remove_strays()
        # Walking the data directory costs more than a tick: every ten intervals.
        if self._budget is not None and time.monotonic() - self._budget_checked >= (
            10 * self._interval_s
        ):
            self._budget_checked = time.monotonic()
            with session_scope(self._sessions) as session:
                enforce_budget(session, self._data_dir, self._budget, self._models)

    # -- after a (re)start -----------------------------------------------------
    def adopt(self) -> None:
        """Remove half-created studies; live workers hold their GPUs again. Once: the
        service calls it before it serves, and the first tick when that failed."""
        self._adopt()
        self._adopted = True

    def _adopt(self) -> None:
        with session_scope(self._sessions) as session:
            remove_unfinished(session, self._storage)
        with session_scope(self._sessions) as session:
            for worker in session.scalars(
                select(WorkerRow).where(WorkerRow.state.in_(LIVE_STATES))
            ):
                launcher = self._launchers.get(worker.launcher)
                if launcher is None:
                    continue  # its study's tick says why
                launcher.scheduler.hold(worker.id, Lease.parse(worker.host, worker.gpus))
                if worker.ref is not None:
                    self._held[worker.id] = Held(launcher, worker.ref, Path(worker.log_path))

    def _remove_strays(self) -> None:
        """End workers of this service that no live row knows (on every host, once)."""
        with session_scope(self._sessions) as session:
            live = session.execute(
                select(WorkerRow.launcher, WorkerRow.ref).where(WorkerRow.state.in_(LIVE_STATES))
            ).all()
        for name in list(self._strays_left):
            refs = [ref for launcher, ref in live if launcher == name]
            if None in refs:
                continue  # a worker whose handle is not recorded yet would look stray
            try:
                if self._launchers[name].remove_strays({ref for ref in refs if ref}):
                    self._strays_left.discard(name)
            except Exception as exc:
                log.warning("cannot remove stray %s workers yet: %s", name, exc)

    # -- one study -------------------------------------------------------------
    def _due(self) -> list[tuple[int, str]]:
        """Studies that run, have live workers, or have RUNNING trials while not running."""
        live = select(WorkerRow.study_id).where(WorkerRow.state.in_(LIVE_STATES))
        with session_scope(self._sessions) as session:
            rows = session.execute(
                select(StudyRow.id, StudyRow.name)
                .where(
                    or_(
                        StudyRow.status == StudyStatus.RUNNING,
                        StudyRow.id.in_(live),
                        and_(
                            StudyRow.status != StudyStatus.CREATING,
                            StudyRow.name.in_(optuna_queries.running_trials_names_query()),
                        ),
                    )
                )
                .order_by(StudyRow.id)
            ).all()
        return [(row_id, name) for row_id, name in rows]

    def _reconcile(self, row_id: int) -> None:
        seen = self._look(row_id)
        plan = self._decide(row_id, seen)
        if plan is not None:
            self._act(plan)

    def _launcher(self, name: str) -> Launcher:
        launcher = self._launchers.get(name)
        if launcher is None:
            raise RuntimeError(
                f"its workers use the {name} launcher, which this service does not run "
                f"(it runs: {', '.join(sorted(self._launchers))}; known: "
                f"{', '.join(registered())})"
            )
        return launcher

    def _look(self, row_id: int) -> Seen:
        with session_scope(self._sessions) as session:
            workers = session.execute(
                select(WorkerRow.id, WorkerRow.launcher, WorkerRow.ref, StudyRow.name)
                .join(StudyRow, StudyRow.id == WorkerRow.study_id)
                .where(WorkerRow.study_id == row_id, WorkerRow.state.in_(LIVE_STATES))
            ).all()
        seen = Seen()
        for worker_id, name, ref, study in workers:
            launcher = self._launcher(name)
            if ref is None:  # started by a service that stopped before recording it?
                handle = self._unrecorded.get(worker_id)
                seen.found[worker_id] = handle or launcher.find(study, worker_id)
                continue
            try:
                code = launcher.exit_code(ref)
                if code is None:
                    seen.waiting[worker_id] = launcher.pending(ref)
            except Exception as exc:  # e.g. its Docker host is unreachable: ask again later
                log.warning("cannot tell whether worker %s runs: %s", worker_id, exc)
                continue
            if code is not None:
                seen.exits[worker_id] = code
        return seen

    def _decide(self, row_id: int, seen: Seen) -> Plan | None:
        with session_scope(self._sessions) as session:
            # Locked on PostgreSQL; on SQLite the row's version check refuses a stale write.
            row = session.scalar(select(StudyRow).where(StudyRow.id == row_id).with_for_update())
            if row is None:
                return None
            for worker in row.workers:
                if worker.id in seen.found:
                    self._found(worker, seen.found[worker.id])
                elif worker.id in seen.exits:
                    self._reap(session, worker, seen.exits[worker.id])
                elif worker.id in seen.waiting and worker.state != WorkerState.STARTING:
                    reason = seen.waiting[worker.id]
                    worker.state = WorkerState.RUNNING if reason is None else WorkerState.PENDING
                    worker.state_reason = reason
            optuna_id = optuna_queries.optuna_study_id(session, row.name)
            plan = Plan(row.name, row.id, optuna_id)
            spec = row.study_spec
            now = utc_now()
            if optuna_id is None:
                if row.status in (StudyStatus.RUNNING, StudyStatus.PAUSED):
                    self._end(
                        row,
                        StudyStatus.FAILED,
                        "its Optuna study was deleted or renamed outside the service",
                    )
            elif row.status == StudyStatus.RUNNING:
                self._judge(session, row, spec, optuna_id, now)
            live = [w for w in row.workers if w.live]
            if row.status in (StudyStatus.STOPPED, StudyStatus.FAILED):
                plan.stops = [
                    (w.id, self._launcher(w.launcher), w.ref) for w in live if w.ref is not None
                ]
                plan.fail_running = not live and optuna_id is not None
            else:
                plan.sweep = not live and optuna_id is not None
                if row.status == StudyStatus.RUNNING and optuna_id is not None:
                    plan.starts = self._new_workers(session, row, spec, optuna_id, live, now)
            return plan

    def _found(self, worker: WorkerRow, handle: WorkerHandle | None) -> None:
        if handle is None:
            worker.end(WorkerState.LOST, None)
            log.warning("worker %s was never started (its service stopped first)", worker.id)
        else:
            self._record(worker, handle)

    def _record(self, worker: WorkerRow, handle: WorkerHandle) -> None:
        worker.ref, worker.pid, worker.host = handle.ref, handle.pid, handle.host
        worker.log_path = str(handle.log_path)
        worker.state = WorkerState.RUNNING
        self._held[worker.id] = Held(self._launcher(worker.launcher), handle.ref, handle.log_path)

    def _reap(self, session: Session, worker: WorkerRow, code: int) -> None:
        if code == LOST:  # not our child: its status is what it recorded, if anything
            session.refresh(worker, ["exit_code"])
            code = 0 if worker.exit_code == 0 else LOST
        if worker.id in self._kill_at:
            state = WorkerState.STOPPED
        elif code == 0:
            state = WorkerState.EXITED
        elif code == LOST:
            state = WorkerState.LOST
        else:
            state = WorkerState.FAILED
        worker.end(state, None if code == LOST else code)
        log.info("worker %s of %s exited with %s", worker.id, worker.study.name, code)

    def _judge(
        self, session: Session, row: StudyRow, spec: StudySpec, optuna_id: int, now: dt.datetime
    ) -> None:
        counts = optuna_queries.trial_counts(session, optuna_id)
        limit = spec.max_failed_trials
        failures = (
            optuna_queries.unretried_failures(session, optuna_id)
            if limit is not None and counts["FAIL"] > limit
            else 0
        )
        streak = lifecycle.crash_streak(row.workers, row.resumed_at)
        if streak and streak[0].exit_code == MISCONFIGURED:  # no restart would run either
            last = "\n".join(self._last_lines(streak[0], 5))
            self._end(row, StudyStatus.FAILED, f"its workers cannot run here: {last}")
            return
        unreachable_for = None
        if streak and all(w.exit_code == UNREACHABLE for w in streak):
            unreachable_for = (now - streak[-1].started_at).total_seconds()
        verdict = lifecycle.verdict(
            spec,
            counts,
            unretried_failures=failures,
            crashes=len(streak),
            created_at=row.created_at,
            now=now,
            unreachable_for=unreachable_for,
            outage_s=self._outage_s,
        )
        if verdict is None:
            return
        reason = verdict.reason
        if verdict.cause == "crashes":
            reason += "; last worker's log:\n" + "\n".join(self._last_lines(streak[0], 20))
        self._end(row, StudyStatus(verdict.status), reason)

    def _last_lines(self, worker: WorkerRow, lines: int) -> list[str]:
        """An ended worker's last log lines: through its launcher while it keeps them (a
        container not removed yet), else from its file."""
        launcher = self._launchers.get(worker.launcher)
        if launcher is not None and worker.ref is not None:
            with contextlib.suppress(Exception):  # unreachable: the file may have them
                kept = launcher.log_lines(worker.ref)
                if kept is not None:
                    return kept[-lines:]
        return log_tail(worker.log_path, lines)

    def _new_workers(
        self,
        session: Session,
        row: StudyRow,
        spec: StudySpec,
        optuna_id: int,
        live: list[WorkerRow],
        now: dt.datetime,
    ) -> list[tuple[Launcher, WorkerLaunch]]:
        """Commit the rows of the workers to start (GPUs leased to them); started later."""
        if spec.workers.count <= len(live):
            return []  # nothing to start: no need to read the budget or the trials every tick
        launcher = self._launchers.get(spec.workers.launcher)
        if launcher is None:
            self._end(
                row,
                StudyStatus.FAILED,
                f"workers.launcher is {spec.workers.launcher}, which this service does not run",
            )
            return []
        count = lifecycle.workers_to_start(
            spec,
            live=len(live),
            budget_used=optuna_queries.budget_used(session, optuna_id),
            first_trial_started=optuna_queries.any_started(session, optuna_id),
            start_one_first=launcher.start_one_first,
            streak=lifecycle.crash_streak(row.workers, row.resumed_at),
            now=now,
        )
        starts = []
        for _ in range(count):
            worker = WorkerRow(launcher=launcher.name, host="", log_path="")
            row.workers.append(worker)
            session.flush()  # its id owns the lease
            lease = launcher.scheduler.lease(worker.id, spec.workers.gpus_per_worker)
            if lease is None:
                row.workers.remove(worker)  # deleted at the commit; nothing holds its id
                log.info("study %s waits for %s free GPUs", row.name, spec.workers.gpus_per_worker)
                break
            worker.host, worker.gpus = lease.host, lease.gpu_list()
            worker.log_path = str(worker_log_path(self._data_dir, row.name, worker.id))
            launch = WorkerLaunch(
                row.name, worker.id, lease, spec.workers.image, spec.workers.gpus_per_worker
            )
            starts.append((launcher, launch))
        return starts

    @staticmethod
    def _end(row: StudyRow, status: StudyStatus, reason: str) -> None:
        row.set_status(status, reason)
        log.info("study %s %s: %s", row.name, status, reason)

    # -- after the commit -------------------------------------------------------
    def _act(self, plan: Plan) -> None:
        """Each action on its own: one that fails is logged, and done again next tick."""
        actions: list[tuple[str, Callable[[], object]]] = []
        for launcher, launch in plan.starts:
            start = functools.partial(self._start, launcher, launch)
            actions.append((f"starting worker {launch.worker_id}", start))
        for worker_id, launcher, ref in plan.stops:
            stop = functools.partial(self._stop, worker_id, launcher, ref)
            actions.append((f"stopping worker {worker_id}", stop))
        optuna_id = plan.optuna_id
        if optuna_id is not None and plan.fail_running:
            actions.append(
                ("failing its trials", functools.partial(self._fail_running_trials, optuna_id))
            )
        if optuna_id is not None and plan.sweep:
            actions.append(
                ("failing stale trials", functools.partial(self._sweep, plan, optuna_id))
            )
        for what, action in actions:
            try:
                action()
            except Exception:
                log.exception("study %s: %s failed; trying again next tick", plan.name, what)

    def _sweep(self, plan: Plan, optuna_id: int) -> None:
        study = optuna.load_study(study_name=plan.name, storage=self._storage)
        self._stale.sweep(study, self._storage, plan.row_id, optuna_id)

    def _start(self, launcher: Launcher, launch: WorkerLaunch) -> None:
        worker_id = launch.worker_id
        try:
            handle = launcher.start(launch)
        except Exception as exc:
            # Counted like a crash: restarts back off, max_restarts fails the study (an
            # unreachable host only once it stays so for launcher_outage_s).
            log.warning("worker %s of %s did not start: %s", worker_id, launch.study, exc)
            path = worker_log_path(self._data_dir, launch.study, worker_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(
                f"could not start a {launcher.name} worker on {launch.lease.host}: {exc}\n"
            )
            code = UNREACHABLE if isinstance(exc, LauncherUnavailable) else -1
            with session_scope(self._sessions) as session:
                worker = session.get(WorkerRow, worker_id)
                if worker is not None:
                    worker.end(WorkerState.FAILED, code)
            return
        self._unrecorded[worker_id] = handle  # until its row says it runs
        with session_scope(self._sessions) as session:
            worker = session.get(WorkerRow, worker_id)
            if worker is not None:
                self._record(worker, handle)
        del self._unrecorded[worker_id]
        log.info(
            "started worker %s (%s) on %s for %s", worker_id, handle.ref, handle.host, launch.study
        )

    def _stop(self, worker_id: int, launcher: Launcher, ref: str) -> None:
        """SIGTERM now; SIGKILL once the stop timeout passed. Never waits."""
        kill_at = self._kill_at.get(worker_id)
        if kill_at is None:
            launcher.stop(ref)
            self._kill_at[worker_id] = time.monotonic() + self._stop_timeout_s
        elif time.monotonic() >= kill_at:
            launcher.kill(ref)

    def _fail_running_trials(self, optuna_id: int) -> None:
        """A stopped or failed study's trials that no worker is left to end: FAIL, no retry."""
        storage = self._storage
        for trial in storage.get_all_trials(
            optuna_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
        ):
            trial_id = storage.get_trial_id_from_study_id_trial_number(optuna_id, trial.number)
            try:
                # The stop's failure, not the trial's: no retry, no count toward the limit.
                storage.set_trial_system_attr(trial_id, optuna_tables.STOPPED_KEY, True)
                storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # it finished in the meantime

    def _let_go(self) -> None:
        """Workers whose rows say they ended: free their GPUs and what their launcher kept."""
        with session_scope(self._sessions) as session:
            live = set(
                session.scalars(select(WorkerRow.id).where(WorkerRow.state.in_(LIVE_STATES)))
            )
        for launcher in self._launchers.values():
            for owner in launcher.scheduler.owners() - live:
                launcher.scheduler.release(owner)
        for worker_id in set(self._held) - live:
            held = self._held[worker_id]
            try:
                held.launcher.forget(held.ref, held.log_path)
            except Exception as exc:  # e.g. its host is unreachable: again next tick
                log.warning("cannot clean up after worker %s yet: %s", worker_id, exc)
                continue
            del self._held[worker_id]
            self._kill_at.pop(worker_id, None)
