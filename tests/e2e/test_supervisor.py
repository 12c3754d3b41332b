"""A paused study whose worker died: its trial is failed, and its retry waits for the resume."""

from __future__ import annotations

import os
import signal

import pytest

from tests.e2e.harness import Service, study_summary, wait_for
from tests.specs import synthetic

pytestmark = pytest.mark.slow


def test_a_paused_study_whose_worker_died_gets_its_trial_failed(service: Service) -> None:
    spec = synthetic(
        "napping",
        n_trials=3,
        epochs=40,  # ~8 s a trial
        sleep_s=0.2,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(
            lambda: study_summary(client, "napping")["counts"]["RUNNING"] == 1,
            60,
            "a running trial",
        )
        assert client.post("/studies/napping/pause").status_code == 200
        (worker,) = client.get("/studies/napping/workers").json()
        os.kill(worker["pid"], signal.SIGKILL)  # no worker is left to fail its trial
        # Failed, then its retry queued (in the next transaction): for when it resumes.
        counts = wait_for(
            lambda: (
                (c := study_summary(client, "napping")["counts"])["RUNNING"] == 0
                and c["WAITING"] == 1
                and c
            ),
            60,
            "the dead worker's trial to be failed and its retry queued",
        )
    assert counts["FAIL"] == 1
