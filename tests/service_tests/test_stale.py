"""Trials whose worker died end FAIL with a retry queued; no clock of another machine
decides it."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import optuna
import pytest
from fastapi.testclient import TestClient

from service.db import make_engine, make_session_factory, optuna_storage
from service.settings import Settings
from service.stale import StaleTrials
from service.studies import retry_failed_trial, study_row_id_query
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
