"""SIGTERM (what `docker stop` and the service send) never leaves a trial RUNNING: one that
lands between a trial's reservation and its training, or between the end of its training
and its recording, waits for the trial to fail for a retry or to be recorded.

The worker runs in this process, on a real SIGTERM sent to it at those points.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState

from service.settings import Settings
from service.storage import optuna_queries
from service.worker import loop, signals
from tests.specs import synthetic


@pytest.fixture
def study_worker(client: TestClient, settings: Settings) -> Iterator[Any]:
    """The worker of a 3-trial study, with this process's SIGTERM handled as a worker's."""
    spec = synthetic("term", n_trials=3, epochs=2, max_retries=1, max_failed_trials=None)
    assert client.post("/studies", json=spec).status_code == 201
    handler = signals.Sigterm()
    previous = signal.signal(signal.SIGTERM, handler.handle)
    original = signals.sigterm
    signals.sigterm = handler
    study = loop.Worker("term", 0, settings)
    try:
        yield study
    finally:
        signals.sigterm = original
        signal.signal(signal.SIGTERM, previous)
        study.heartbeat.close()
        study.close()


def _sigterm_then(call: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return call(*args, **kwargs)

    return wrapped


def _sigterm_after(call: Callable[..., Any]) -> Callable[..., Any]:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = call(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    return wrapped


def test_sigterm_right_after_a_reservation_fails_the_trial_for_a_retry(study_worker: Any) -> None:
    # Raised out of the reservation, it left trial 0 RUNNING until the stale sweep.
    study_worker.reservations.reserve = _sigterm_after(study_worker.reservations.reserve)
    with pytest.raises(signals.WorkerStopped):
        study_worker.run()
    trials = study_worker.study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    with study_worker.engine.connect() as conn:
        assert optuna_queries.has_retry(conn, study_worker.optuna_id, 0)


def test_sigterm_before_a_trained_trial_is_recorded_lets_it_complete(study_worker: Any) -> None:
    # Raised before the result was told, it left trial 0 RUNNING, its training lost.
    study_worker.recorder.record = _sigterm_then(study_worker.recorder.record)
    with pytest.raises(signals.WorkerStopped):
        study_worker.run()
    (trial,) = study_worker.study.get_trials(deepcopy=False)  # and no second one began
    assert trial.state == TrialState.COMPLETE
