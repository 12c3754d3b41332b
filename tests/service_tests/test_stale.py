"""A trial abandoned before its first heartbeat still ends FAIL, with a retry queued."""

from __future__ import annotations

import optuna
from fastapi.testclient import TestClient

from service.db import make_engine, make_session_factory, optuna_storage
from service.settings import Settings
from service.studies import retry_failed_trial, sweep_stale_trials
from tests.support import wait_for


def test_a_trial_without_any_heartbeat_is_failed_and_retried(
    client: TestClient, settings: Settings
) -> None:
    assert client.post("/studies", json={"name": "orphan", "task": "synthetic"}).status_code == 201
    engine = make_engine(settings.database_url)
    sessions = make_session_factory(engine)
    storage = optuna_storage(
        settings.database_url,
        heartbeat_interval=1,
        grace_period=1,
        stale_trial_callback=retry_failed_trial(sessions),
    )
    study = optuna.load_study(study_name="orphan", storage=storage)
    abandoned = study.ask()  # a worker killed right after creating its trial: no heartbeat
    abandoned.suggest_float("x", -10, 10)

    def swept_and_failed() -> bool:
        sweep_stale_trials(engine, sessions, storage, study, grace_s=1)
        return study.trials[0].state == optuna.trial.TrialState.FAIL

    wait_for(swept_and_failed, 15, "the silent trial to be failed", interval_s=0.25)
    first, retry = study.trials
    assert retry.state == optuna.trial.TrialState.WAITING
    assert retry.system_attrs["retry_history"] == [first.number]
    assert retry.params == first.params
