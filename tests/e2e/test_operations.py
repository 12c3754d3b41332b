"""Pause, resume, PATCH, enqueue and DELETE do what they say, with real workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import optuna
import pytest

from service.storage.db import optuna_storage
from service.storage.rows import LIVE_STATES as LIVE
from tests.e2e.harness import (
    Service,
    optuna_trials,
    start_service,
    stop_service,
    study_summary,
    wait_for,
    wait_for_status,
)
from tests.specs import synthetic

pytestmark = pytest.mark.slow

SLOW = {"epochs": 4, "sleep_s": 0.1}  # ~0.4 s a trial


def _workers_gone(client: httpx.Client, name: str) -> bool:
    study = study_summary(client, name)
    return study["counts"]["RUNNING"] == 0 and all(w["state"] not in LIVE for w in study["workers"])


def test_pause_lets_trials_finish_and_resume_completes_the_budget(service: Service) -> None:
    spec = synthetic(
        "pr",
        n_trials=16,
        task_args=SLOW,
        workers=2,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(lambda: study_summary(client, "pr")["counts"]["COMPLETE"] >= 2, 60, "two trials")
        paused = client.post("/studies/pr/pause")
        assert paused.status_code == 200
        assert paused.json()["status"] == "paused"
        started_at_pause = sum(paused.json()["counts"].values())

        wait_for(lambda: _workers_gone(client, "pr"), 60, "workers to finish their trial and exit")
        study = study_summary(client, "pr")
        assert study["status"] == "paused"
        assert study["counts"]["FAIL"] == 0  # in-flight trials finished, not killed
        assert sum(study["counts"].values()) <= started_at_pause + 2  # at most the in-flight
        assert all(w["state"] == "exited" for w in study["workers"])
        assert not [t for t in optuna_trials(service, "pr") if t.state.name == "RUNNING"]
        assert client.post("/studies/pr/pause").status_code == 409

        resumed = client.post("/studies/pr/resume")
        assert resumed.status_code == 200
        assert resumed.json()["status"] == "running"
        assert client.post("/studies/pr/resume").status_code == 409
        final = wait_for_status(client, "pr", 120, service)
    assert final["status"] == "finished"
    assert final["counts"]["COMPLETE"] + final["counts"]["PRUNED"] == 16
    assert len(final["workers"]) > 2  # new workers after the resume
    assert len(optuna_trials(service, "pr")) == 16


def test_patch_changes_budget_and_workers_live(service: Service) -> None:
    spec = synthetic(
        "patched",
        n_trials=6,
        task_args=SLOW,
        workers=1,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        patched = client.patch("/studies/patched", json={"n_trials": 10, "workers": {"count": 2}})
        assert patched.status_code == 200, patched.text
        assert patched.json()["n_trials"] == 10
        assert patched.json()["spec"]["workers"]["count"] == 2
        wait_for(
            lambda: len(study_summary(client, "patched")["workers"]) >= 2, 30, "a second worker"
        )
        finished = wait_for_status(client, "patched", 120, service)
        assert finished["status"] == "finished"
        assert finished["counts"]["COMPLETE"] + finished["counts"]["PRUNED"] == 10

        more = client.patch("/studies/patched", json={"n_trials": 12})
        assert more.json()["status"] == "running"  # a finished study with room continues
        again = wait_for_status(client, "patched", 120, service)
        assert again["counts"]["COMPLETE"] + again["counts"]["PRUNED"] == 12
        assert len(optuna_trials(service, "patched")) == 12

        for bad, field in (
            ({"n_trials": 0}, "n_trials"),
            ({"workers": {"count": 0}}, "workers.count"),
            ({"task": "digits"}, "task"),
            ({"n_trials": None}, "n_trials"),
        ):
            response = client.patch("/studies/patched", json=bad)
            assert response.status_code == 422, (bad, response.text)
            assert response.json()["errors"][0]["field"] == field
        assert study_summary(client, "patched")["n_trials"] == 12


def test_enqueued_parameters_run_first_after_resume(service: Service) -> None:
    spec = synthetic(
        "queued",
        n_trials=4,
        epochs=2,
        workers=1,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        assert client.post("/studies/queued/pause").status_code == 200
        wait_for(lambda: _workers_gone(client, "queued"), 60, "the worker to exit")
        done_before = study_summary(client, "queued")["counts"]["COMPLETE"]

        bad = client.post("/studies/queued/trials", json={"trials": [{"x": 99.0}]})
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "trials.0.x"
        queued = client.post("/studies/queued/trials", json={"trials": [{"x": 1.5, "y": 2}]})
        assert queued.status_code == 201, queued.text
        assert queued.json()["counts"]["WAITING"] == 1
        waiting = [t for t in optuna_trials(service, "queued") if t.state.name == "WAITING"]
        assert len(waiting) == 1

        if done_before < 4:
            assert client.post("/studies/queued/resume").status_code == 200
            wait_for_status(client, "queued", 120, service)
        else:  # the budget was already spent: raise it for the queued trial
            client.patch("/studies/queued", json={"n_trials": done_before + 1})
            wait_for_status(client, "queued", 120, service)
    ran = [t for t in optuna_trials(service, "queued") if t.params == {"x": 1.5, "y": 2}]
    assert len(ran) == 1
    assert ran[0].state.name == "COMPLETE"


def test_delete_refuses_a_running_study_then_removes_everything(service: Service) -> None:
    spec = synthetic("gone", n_trials=50, task_args=SLOW)
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(lambda: study_summary(client, "gone")["counts"]["COMPLETE"] >= 1, 60, "a trial")
        refused = client.delete("/studies/gone")
        assert refused.status_code == 409
        assert "stop or pause it" in refused.json()["detail"]

        assert client.post("/studies/gone/stop").status_code == 200
        wait_for(lambda: _workers_gone(client, "gone"), 60, "the worker to stop")
        assert (service.data_dir / "studies" / "gone").exists()
        assert client.delete("/studies/gone").status_code == 204
        assert client.get("/studies/gone").status_code == 404
        assert client.delete("/studies/gone").status_code == 404
        assert "gone" not in optuna.get_all_study_names(optuna_storage(service.database_url))
        assert not (service.data_dir / "studies" / "gone").exists()
        assert client.post("/studies", json=spec).status_code == 201  # the name is free again
        client.post("/studies/gone/stop")


def test_submit_wait_rides_out_a_service_restart(service: Service, tmp_path: Path) -> None:
    # `submit --wait` gave up (exit 2) at the first refused connection of a restart.
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(synthetic("patient", n_trials=6, epochs=6, sleep_s=0.2, workers=1)))
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HELIOS_HPO_")}
    waiting = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "submit", str(spec), "--wait", "--url", service.url],
        env={**clean, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert waiting.stdout is not None
        assert waiting.stdout.readline().startswith("created study 'patient'")
        stop_service(service)  # the service is away while its worker trains on
        port = int(service.url.rsplit(":", 1)[1])
        second = start_service(
            service.database_url, service.data_dir, tmp_path / "second.log", {}, port=port
        )
        try:
            out, err = waiting.communicate(timeout=180)
        finally:
            stop_service(second)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert "study 'patient' finished" in out
    assert "the service is away" in err  # it said why it waited
