"""Trials whose worker died end FAIL with a retry queued; no clock of another machine
decides it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import optuna
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from service.storage import optuna_tables
from service.storage.db import make_engine, make_session_factory, optuna_storage
from service.studies.operations import retry_failed_trial
from service.studies.reads import study_row_id_query
from service.trials.stale import StaleTrials
from tests.specs import synthetic


class _Clock:
    """The sweeper's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Orphan = tuple[optuna.Study, optuna.storages.RDBStorage, int, int]


@pytest.fixture
def orphan(client: TestClient, settings: Settings) -> Iterator[Orphan]:
    """A study, its storage (the service's), and our and Optuna's ids of it."""
    assert client.post("/studies", json=synthetic("orphan")).status_code == 201
    engine = make_engine(settings.database_url)
    storage = optuna_storage(
        settings.database_url,
        heartbeat_interval=1,
        grace_period=1,
        stale_trial_callback=retry_failed_trial(make_session_factory(engine)),
    )
    study = optuna.load_study(study_name="orphan", storage=storage)
    with engine.connect() as conn:
        row_id = conn.scalar(study_row_id_query("orphan"))
    assert row_id is not None
    yield study, storage, row_id, storage.get_study_id_from_name("orphan")
    engine.dispose()


def _sweeper(settings: Settings, clock: _Clock, grace_s: float = 60) -> StaleTrials:
    return StaleTrials(make_engine(settings.database_url), grace_s, clock)


def test_a_trial_without_any_heartbeat_is_failed_once_seen_silent_for_the_grace(
    orphan: Orphan, settings: Settings
) -> None:
    study, storage, row_id, optuna_id = orphan
    abandoned = study.ask()  # a worker killed right after creating its trial: no heartbeat
    abandoned.suggest_float("x", -10, 10)
    clock = _Clock()
    sweeper = _sweeper(settings, clock)
    assert sweeper.sweep(study, storage, row_id, optuna_id) == []  # first seen now
    clock.now = 59.0
    assert sweeper.sweep(study, storage, row_id, optuna_id) == []
    clock.now = 60.0
    assert len(sweeper.sweep(study, storage, row_id, optuna_id)) == 1
    first, retry = study.trials
    assert first.state == optuna.trial.TrialState.FAIL
    assert retry.state == optuna.trial.TrialState.WAITING
    assert retry.system_attrs["retry_history"] == [first.number]
    assert retry.params == first.params


def test_a_worker_whose_clock_is_hours_behind_keeps_its_fresh_trial(
    orphan: Orphan, settings: Settings
) -> None:
    # The sweep compared the trial's datetime_start (the asking machine's local time) with
    # its own clock: a worker 5 hours behind had its fresh trial failed at once.
    study, storage, row_id, optuna_id = orphan
    tz = os.environ.get("TZ")
    os.environ["TZ"] = "Etc/GMT+5"  # UTC-5: Optuna stamps datetime_start with local time
    time.tzset()
    try:
        study.ask()
    finally:
        if tz is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = tz
        time.tzset()
    clock = _Clock()
    sweeper = _sweeper(settings, clock)
    assert sweeper.sweep(study, storage, row_id, optuna_id) == []
    (trial,) = study.trials
    assert trial.state == optuna.trial.TrialState.RUNNING


def _failed_without_retry(study: optuna.Study, storage: optuna.storages.RDBStorage) -> int:
    """A trial failed as stale by a sweeper killed before it queued the retry."""
    trial = study.ask()
    trial.suggest_float("x", -10, 10)
    storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return trial.number


def test_a_retry_lost_between_failing_a_trial_and_queueing_it_is_queued_by_the_next_sweep(
    orphan: Orphan, settings: Settings
) -> None:
    # Failing a stale trial and queueing its retry are two writes; a worker SIGKILLed
    # between them (its sweep runs between trials) left the failure without a retry.
    study, storage, row_id, optuna_id = orphan
    number = _failed_without_retry(study, storage)
    sweeper = _sweeper(settings, _Clock())
    sweeper.sweep(study, storage, row_id, optuna_id)
    sweeper.sweep(study, storage, row_id, optuna_id)  # queued once, not again
    first, retry = study.trials
    assert retry.state == optuna.trial.TrialState.WAITING
    assert retry.system_attrs["retry_history"] == [number]
    assert retry.params == first.params


def test_the_next_sweep_queues_no_retry_past_max_retries_or_for_a_stopped_trial(
    orphan: Orphan, settings: Settings
) -> None:
    study, storage, row_id, optuna_id = orphan
    stopped = study.ask()
    storage.set_trial_system_attr(stopped._trial_id, optuna_tables.STOPPED_KEY, True)
    storage.set_trial_state_values(stopped._trial_id, optuna.trial.TrialState.FAIL)
    exhausted = study.ask()  # the spec's max_retries (2) retries of trials 0 and 1 failed
    storage.set_trial_system_attr(exhausted._trial_id, "retry_history", [97, 98])
    storage.set_trial_state_values(exhausted._trial_id, optuna.trial.TrialState.FAIL)
    _sweeper(settings, _Clock()).sweep(study, storage, row_id, optuna_id)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2


def test_a_stopped_study_gets_no_retry_of_a_lost_one(
    orphan: Orphan, settings: Settings, client: TestClient
) -> None:
    study, storage, row_id, optuna_id = orphan
    _failed_without_retry(study, storage)
    assert client.post("/studies/orphan/stop").status_code == 200
    _sweeper(settings, _Clock()).sweep(study, storage, row_id, optuna_id)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL]
