"""Reserving a trial and recording how it ended survive a reply lost after its work
committed: no orphan RUNNING trial, no retry missing or queued twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from service.settings import Settings
from service.storage import optuna_queries
from service.storage.db import make_engine, optuna_storage, with_db_retries
from service.studies.reads import study_row_id_query
from service.trials.outcome import Outcome, Recorder
from service.trials.reservation import Reservation, Reservations
from tests.specs import synthetic


@dataclasses.dataclass
class Worker:
    """What a worker reserves and records with, on a storage whose replies the test drops."""

    engine: Engine
    optuna_id: int
    storage: optuna.storages.RDBStorage
    study: optuna.Study
    reservations: Reservations
    recorder: Recorder

    def reserve(self) -> Reservation:
        slot = with_db_retries("reserving", lambda: self.reservations.reserve(0), 30)
        assert isinstance(slot, Reservation), slot
        return slot

    def silent(self) -> list[int]:
        with self.engine.connect() as conn:
            return optuna_queries.silent_running_trials(conn, self.optuna_id)


def lose_next_reply(storage: optuna.storages.RDBStorage, method: str) -> list[bool]:
    """The next call of ``storage.<method>`` does its work and commits, then its reply is
    lost, as when the connection drops after the commit. The list gets True then.

    (A study's trials are created through ``_create_new_trial``: Optuna's cache in front of
    the storage calls it.)"""
    real: Callable[..., Any] = getattr(storage, method)
    lost: list[bool] = []

    def lossy(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        if not lost:
            lost.append(True)
            raise OperationalError(method, None, ConnectionError("connection lost (injected)"))
        return result

    setattr(storage, method, lossy)
    return lost


@pytest.fixture
def worker(client: TestClient, settings: Settings) -> Iterator[Worker]:
    spec = synthetic("lossy", max_retries=2, max_failed_trials=None)
    assert client.post("/studies", json=spec).status_code == 201
    engine = make_engine(settings.database_url)
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
    storage = optuna_storage(
        settings.database_url, heartbeat_interval=1, grace_period=4, stale_trial_callback=retry
    )
    study = optuna.load_study(study_name="lossy", storage=storage)
    with engine.connect() as conn:
        row_id = conn.scalar(study_row_id_query("lossy"))
    assert row_id is not None
    ids = {"study_row_id": row_id, "optuna_id": storage.get_study_id_from_name("lossy")}
    yield Worker(
        engine,
        ids["optuna_id"],
        storage,
        study,
        Reservations(engine, storage, study, worker_id=1, **ids),
        Recorder(engine, storage, study, retry=retry, db_retry_s=30, **ids),
    )
    engine.dispose()


def test_an_ask_whose_reply_was_lost_takes_the_trial_it_created(worker: Worker) -> None:
    # The retried ask created a second trial; the first stayed RUNNING with no worker.
    lost = lose_next_reply(worker.storage, "_create_new_trial")
    slot = worker.reserve()
    assert lost == [True]
    (trial,) = worker.study.trials
    assert (trial.number, trial.state) == (slot.number, TrialState.RUNNING)
    assert worker.silent() == []  # its first heartbeat is there


def test_a_failure_told_twice_queues_its_retry(worker: Worker) -> None:
    # The told-again FAIL raised "Cannot tell a FAIL trial", which was logged and ended
    # the recording: the trial got no retry.
    slot = worker.reserve()
    lost = lose_next_reply(worker.storage, "set_trial_state_values")
    worker.recorder.record(slot, Outcome(TrialState.FAIL))
    assert lost == [True]
    failed, retry = worker.study.trials
    assert failed.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING
    assert retry.system_attrs["retry_history"] == [failed.number]


def test_a_retry_whose_reply_was_lost_is_not_queued_twice(worker: Worker) -> None:
    slot = worker.reserve()
    lost = lose_next_reply(worker.storage, "_create_new_trial")  # the retry's add_trial
    worker.recorder.record(slot, Outcome(TrialState.FAIL))
    assert lost == [True]
    states = [t.state for t in worker.study.trials]
    assert states == [TrialState.FAIL, TrialState.WAITING]


def test_a_completion_told_twice_keeps_its_values(worker: Worker) -> None:
    slot = worker.reserve()
    slot.trial.suggest_float("x", -10, 10)
    lose_next_reply(worker.storage, "set_trial_state_values")
    worker.recorder.record(slot, Outcome(TrialState.COMPLETE, [0.5]))
    (trial,) = worker.study.trials
    assert (trial.state, trial.values) == (TrialState.COMPLETE, [0.5])


def test_a_trial_failed_as_stale_meanwhile_is_not_retried_again(worker: Worker) -> None:
    slot = worker.reserve()
    # Another process's stale sweep failed it and queued its retry before the worker's
    # result came.
    worker.storage.set_trial_state_values(slot.trial_id, TrialState.FAIL)
    optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)(
        worker.study, worker.storage.get_trial(slot.trial_id)
    )
    worker.recorder.record(slot, Outcome(TrialState.FAIL))
    assert [t.state for t in worker.study.trials] == [TrialState.FAIL, TrialState.WAITING]


def test_trials_a_stop_ended_are_no_failures_of_their_own(
    worker: Worker, client: TestClient
) -> None:
    # Counted as failures, they failed a study stopped amid more trials than
    # max_failed_trials as soon as it was resumed.
    slots = [worker.reserve() for _ in range(3)]
    assert client.post("/studies/lossy/stop").status_code == 200
    for slot in slots:
        worker.recorder.record(slot, Outcome(TrialState.FAIL, stopped=True))
    assert [t.state for t in worker.study.trials] == [TrialState.FAIL] * 3  # and no retries
    with worker.engine.connect() as conn:
        assert optuna_queries.unretried_failures(conn, worker.optuna_id) == 0
    # A failure while the study runs still counts until its retry takes over.
    assert client.post("/studies/lossy/resume").status_code == 200
    slot = worker.reserve()
    worker.storage.set_trial_state_values(slot.trial_id, TrialState.FAIL)
    with worker.engine.connect() as conn:
        assert optuna_queries.unretried_failures(conn, worker.optuna_id) == 1
