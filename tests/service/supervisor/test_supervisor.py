"""The supervisor tick by tick, on a real database with real worker processes: one study's
fault stays in that study, a GPU lease is released once, a started worker always has its
row, stopping never waits, and no trial is left RUNNING without a worker."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from service.launchers.local import LocalLauncher
from service.settings import WORKER_COMMAND, Settings
from service.spec.models import StudyPatch, StudySpec
from service.storage import optuna_tables
from service.storage.db import make_engine, make_session_factory, optuna_storage, session_scope
from service.storage.rows import StudyRow, WorkerRow
from service.studies import operations, reads
from service.supervisor.supervisor import Supervisor
from tests.specs import synthetic
from tests.support import wait_for

pytestmark = pytest.mark.slow

STUBBORN = [sys.executable, str(Path(__file__).with_name("stubborn_worker.py"))]


@dataclasses.dataclass
class Rig:
    """A supervisor driven by the test, one tick at a time."""

    settings: Settings
    sessions: sessionmaker[Session]
    storage: optuna.storages.RDBStorage
    launcher: LocalLauncher
    supervisor: Supervisor

    def create(self, name: str, **fields: Any) -> None:
        spec = StudySpec.model_validate(synthetic(name, **fields))
        with session_scope(self.sessions) as session:
            operations.create_study(session, spec, self.storage, launchers={"local": self.launcher})

    def workers(self, name: str) -> list[WorkerRow]:
        with session_scope(self.sessions) as session:
            return list(reads.get_study(session, name).workers)

    def study(self, name: str) -> StudyRow:
        with session_scope(self.sessions) as session:
            return reads.get_study(session, name)

    def tick_until(self, done: Callable[[], Any], what: str, timeout_s: float = 60) -> Any:
        def ticked() -> Any:
            self.supervisor.tick()
            return done()

        return wait_for(ticked, timeout_s, what, interval_s=0.1)

    def restart(self) -> None:
        """A new supervisor on the same database: what a restarted service runs."""
        self.launcher = _launcher(self.settings, self.launcher.command)
        self.supervisor = _supervisor(self.settings, self.sessions, self.storage, self.launcher)


def _launcher(settings: Settings, command: list[str]) -> LocalLauncher:
    """Local workers on one GPU (its id is all they are given: none is used)."""
    env = {
        "OMP_NUM_THREADS": "1",
        "HELIOS_HPO_HEARTBEAT_INTERVAL_S": "1",
        "HELIOS_HPO_HEARTBEAT_GRACE_S": "4",
    }
    return LocalLauncher(
        settings.database_url, settings.data_dir, [0], extra_env=env, command=command
    )


def _supervisor(
    settings: Settings,
    sessions: sessionmaker[Session],
    storage: optuna.storages.RDBStorage,
    launcher: LocalLauncher,
) -> Supervisor:
    return Supervisor(
        make_engine(settings.database_url),
        sessions,
        storage,
        {"local": launcher},
        interval_s=1,
        stop_timeout_s=1,
        grace_s=4,
        data_dir=settings.data_dir,
    )


def _rig(settings: Settings, command: list[str] | None = None) -> Iterator[Rig]:
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    storage = optuna_storage(settings.database_url)
    launcher = _launcher(settings, command or list(WORKER_COMMAND))
    rig = Rig(
        settings, sessions, storage, launcher, _supervisor(settings, sessions, storage, launcher)
    )
    try:
        yield rig
    finally:
        with engine.connect() as conn:
            pids = [pid for (pid,) in conn.execute(select(WorkerRow.pid)) if pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        engine.dispose()


@pytest.fixture
def rig(settings: Settings) -> Iterator[Rig]:
    yield from _rig(settings)


@pytest.fixture
def stubborn(settings: Settings) -> Iterator[Rig]:
    yield from _rig(settings, STUBBORN)


def _fail_next_write(
    sessions: sessionmaker[Session], when: Callable[[Session], bool]
) -> list[bool]:
    """Make the next write of the supervisor's sessions for which ``when`` holds fail, as a
    lost connection would. The returned list gets True once it failed one."""
    fired: list[bool] = []

    def before_flush(session: Session, *_: object) -> None:
        if not fired and when(session):
            fired.append(True)
            raise OperationalError("UPDATE", None, ConnectionError("connection lost (injected)"))

    event.listen(sessions, "before_flush", before_flush)
    return fired


def _ends_a_worker(session: Session) -> bool:
    return any(isinstance(o, WorkerRow) and o.ended_at is not None for o in session.dirty)


def _records_a_start(session: Session) -> bool:
    return any(isinstance(o, WorkerRow) and o.ref is not None for o in session.dirty)


def test_a_study_whose_launcher_fails_does_not_hold_up_the_others(rig: Rig) -> None:
    # A stopped study whose live container is on a Docker host this service no longer has:
    # stopping it fails every tick. That failure aborted the tick of every study.
    spec = StudySpec(name="stuck", task="synthetic").model_dump(mode="json")
    with session_scope(rig.sessions) as session:
        stuck = StudyRow(name="stuck", task="synthetic", spec=spec, status="stopped")
        stuck.workers.append(
            WorkerRow(
                launcher="docker", host="gone", ref="gone/c0ffee", state="running", log_path=""
            )
        )
        session.add(stuck)
    rig.create("healthy", n_trials=1, task_args={"epochs": 1})
    rig.tick_until(lambda: rig.workers("healthy"), "a worker of the healthy study")
    assert rig.study("healthy").status == "running"
    assert rig.workers("stuck")[0].state == "running"  # tried again each tick


def test_a_rolled_back_reap_releases_the_lease_once(rig: Rig) -> None:
    # One GPU. A worker that crashes holds it; another study waits for it. Releasing
    # before the commit, a rolled-back reap released it, and the next tick reaped the
    # worker again as lost and released it twice: two workers shared the GPU.
    rig.create(
        "crashes",
        max_restarts=0,
        task_args={"exit_code": 3},
        workers={"gpus_per_worker": 1},
    )
    rig.create(
        "waits",
        n_trials=1,
        task_args={"epochs": 100, "sleep_s": 0.1},
        workers={"gpus_per_worker": 1},
    )
    rig.supervisor.tick()
    (crashing,) = rig.workers("crashes")
    assert rig.workers("waits") == []
    assert crashing.ref is not None
    wait_for(lambda: rig.launcher.exit_code(crashing.ref or "") is not None, 60, "the crash")
    failed = _fail_next_write(rig.sessions, _ends_a_worker)
    rig.supervisor.tick()
    assert failed == [True]
    assert rig.workers("crashes")[0].state == "running"  # rolled back
    assert rig.launcher.scheduler.owners() == {crashing.id}  # still its lease
    assert rig.workers("waits") == []

    rig.tick_until(lambda: rig.workers("waits"), "the waiting study's worker")
    (reaped,) = rig.workers("crashes")
    assert (reaped.state, reaped.exit_code) == ("failed", 3)  # its own exit, not lost
    (waiting,) = rig.workers("waits")
    rig.create("third", n_trials=1, workers={"gpus_per_worker": 1})
    for _ in range(5):
        rig.supervisor.tick()
        assert rig.workers("third") == []  # GPU 0 is the waiting study's
        assert rig.launcher.scheduler.owners() == {waiting.id}


def test_a_started_worker_whose_row_was_not_updated_is_found_after_a_restart(rig: Rig) -> None:
    # The row was flushed, the process started, then the commit failed: the worker ran with
    # no row, and the next tick started a second one. Now the row is committed first.
    rig.create("one", n_trials=1, task_args={"epochs": 100, "sleep_s": 0.1})
    failed = _fail_next_write(rig.sessions, _records_a_start)
    rig.supervisor.tick()
    assert failed == [True]
    (starting,) = rig.workers("one")
    assert (starting.state, starting.ref) == ("starting", None)
    found = rig.launcher.find("one", starting.id)
    assert found is not None  # it runs

    rig.restart()  # the service stops before its next tick; a new one takes over
    rig.tick_until(lambda: rig.workers("one")[0].state == "running", "the worker to be found")
    (worker,) = rig.workers("one")
    assert (worker.id, worker.ref, worker.pid) == (starting.id, found.ref, found.pid)
    assert rig.launcher.scheduler.owners() == {worker.id}
    for _ in range(5):
        rig.supervisor.tick()
        assert len(rig.workers("one")) == 1  # no second worker


def test_a_patch_during_a_tick_never_ends_the_study_against_the_old_budget(rig: Rig) -> None:
    rig.create("grows", n_trials=2, workers={"count": 1})
    study = optuna.load_study(study_name="grows", storage=rig.storage)
    for _ in range(2):
        study.tell(study.ask(), 1.0)  # the budget is spent: the tick ends the study...
    outcome: list[str] = []
    sent: list[bool] = []

    def patch() -> None:  # ...while a PATCH raises it
        try:
            with session_scope(rig.sessions) as session:
                operations.update_study(session, "grows", StudyPatch(n_trials=5))
            outcome.append("patched")
        except Exception as exc:  # refused: the tick changed the study first
            outcome.append(type(exc).__name__)

    def during_the_tick(session: Session, *_: object) -> None:
        if any(isinstance(o, StudyRow) for o in session.dirty) and not sent:
            sent.append(True)
            thread = threading.Thread(target=patch)
            thread.start()
            thread.join(timeout=3)  # on PostgreSQL it waits for the tick's row lock

    event.listen(rig.sessions, "before_flush", during_the_tick)
    rig.supervisor.tick()
    wait_for(lambda: outcome, 30, "the PATCH to end")
    event.remove(rig.sessions, "before_flush", during_the_tick)
    row = rig.study("grows")
    assert outcome in (["patched"], ["StaleDataError"])
    if outcome == ["patched"]:
        assert (row.status, row.study_spec.n_trials) == ("running", 5)
    else:
        assert (row.status, row.study_spec.n_trials) == ("finished", 2)


def test_stopping_signals_every_worker_at_once_and_kills_them_later(stubborn: Rig) -> None:
    # Workers that do not exit on SIGTERM: each stop waited the full stop timeout, one
    # after the other, and no other study was reconciled meanwhile.
    rig = stubborn
    rig.create("stuck", workers={"count": 3})
    study = optuna.load_study(study_name="stuck", storage=rig.storage)
    study.ask()  # a trial started: the study starts all its workers
    rig.tick_until(lambda: len(rig.workers("stuck")) == 3, "three workers")
    ready = [rig.settings.data_dir / f"ready-{w.id}" for w in rig.workers("stuck")]
    wait_for(lambda: all(p.exists() for p in ready), 30, "the workers to be ready")
    with session_scope(rig.sessions) as session:
        operations.stop_study(session, "stuck")
    rig.supervisor.tick()
    noted = [rig.settings.data_dir / f"sigterm-{w.id}" for w in rig.workers("stuck")]
    wait_for(lambda: all(p.exists() for p in noted), 10, "every worker to get SIGTERM")
    alive = [w for w in rig.workers("stuck") if rig.launcher.exit_code(w.ref or "") is None]
    assert len(alive) == 3  # the tick did not wait for them

    rig.tick_until(
        lambda: {w.state for w in rig.workers("stuck")} == {"stopped"}, "the workers to end"
    )
    assert {w.exit_code for w in rig.workers("stuck")} == {-signal.SIGKILL}
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.FAIL  # no worker was left to end it
    assert rig.launcher.scheduler.owners() == set()


def test_a_stopped_studys_trial_without_a_worker_is_failed(rig: Rig) -> None:
    # Only running studies were swept: a stopped study's trial stayed RUNNING for good.
    rig.create("halted", workers={"count": 1})
    with session_scope(rig.sessions) as session:
        operations.stop_study(session, "halted")
    study = optuna.load_study(study_name="halted", storage=rig.storage)
    study.ask()  # a trial whose worker is gone, and whose failing was missed
    rig.tick_until(
        lambda: study.trials[0].state == optuna.trial.TrialState.FAIL, "the trial to be failed"
    )
    assert len(study.trials) == 1  # stopped on purpose: no retry
    assert rig.workers("halted") == []
    # The stop's failure, not the trial's: a resumed study neither retries it nor counts it.
    assert study.trials[0].system_attrs[optuna_tables.STOPPED_KEY] is True
