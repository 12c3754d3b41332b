"""Faults with real processes and real signals: nothing is left RUNNING, no work is lost."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import time
from pathlib import Path

import optuna
import pytest
import torch

from helios import Trainer
from service.storage.rows import LIVE_STATES as LIVE
from service.tasks.registry import get_task
from service.worker.training import trial_seed
from tests.databases import sqlite_only
from tests.e2e.harness import (
    Service,
    latest_checkpoint_epoch,
    optuna_trials,
    start_service,
    stop_service,
    study_summary,
    wait_for,
    wait_for_status,
)
from tests.specs import synthetic

pytestmark = pytest.mark.slow


def _retried(trials: list[optuna.trial.FrozenTrial]) -> set[int]:
    return {n for t in trials for n in t.system_attrs.get("retry_history", [])}


def test_chaos_sigkill_workers_every_few_seconds(service: Service) -> None:
    spec = synthetic(
        "chaos",
        n_trials=40,
        epochs=10,  # ~1 s a trial
        sleep_s=0.1,
        workers=4,
        max_retries=10,
        max_restarts=100,
        max_failed_trials=None,
    )
    rng = random.Random(7)  # noqa: S311 (choosing a victim)
    # A kill each time about 5 more trials finish: six kills however fast the machine is.
    milestones = [4, 9, 14, 19, 24, 29]
    kills = 0
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        deadline = time.monotonic() + 240
        while milestones and time.monotonic() < deadline:
            study = study_summary(client, "chaos")
            if study["status"] != "running":
                break
            if study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] >= milestones[0]:
                training = [
                    w
                    for w in client.get("/studies/chaos/workers").json()
                    if w["state"] == "running" and w["trials_run"] > 0
                ]
                if training:
                    os.kill(rng.choice(training)["pid"], signal.SIGKILL)
                    kills += 1
                    milestones.pop(0)
            time.sleep(0.25)  # poll interval
        study = wait_for_status(client, "chaos", 240, service)

    assert kills == 6
    assert study["status"] == "finished", study
    counts = study["counts"]
    assert counts["COMPLETE"] + counts["PRUNED"] == 40
    assert counts["RUNNING"] == 0
    assert counts["WAITING"] == 0
    trials = optuna_trials(service, "chaos")
    failed = [t.number for t in trials if t.state.name == "FAIL"]
    assert failed, "no kill landed in a trial"
    assert set(failed) <= _retried(trials)  # every killed trial has a retry
    assert not [t for t in trials if t.state.name == "RUNNING"]


EPOCHS = 60  # ~40 ms each here: the kill lands mid-trial


@sqlite_only
def test_retry_resumes_from_the_checkpoint_with_the_same_result(service: Service) -> None:
    params = {
        "lr": 0.01, "hidden": 64, "dropout": 0.0, "optimizer": "adam", "batch_size": 32,
        "beta1": 0.9, "beta2": 0.999,
    }  # fmt: skip
    spec = {
        "name": "resume",
        "task": "digits",
        "n_trials": 1,
        "task_args": {"epochs": EPOCHS},
        "enqueue_trials": [params],
        "workers": {"count": 1},
    }
    chkpts = service.data_dir / "studies" / "resume" / "trials" / "0"
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(
            lambda: latest_checkpoint_epoch(chkpts) >= 3, 120, "a checkpoint at epoch 3 or later"
        )
        (worker,) = client.get("/studies/resume/workers").json()
        os.kill(worker["pid"], signal.SIGKILL)
        study = wait_for_status(client, "resume", 180, service)

    assert study["status"] == "finished", study
    first, retry = optuna_trials(service, "resume")
    assert first.state.name == "FAIL"
    assert retry.state.name == "COMPLETE"
    assert retry.system_attrs["retry_history"] == [0]
    assert retry.params == first.params
    start = retry.user_attrs["resumed_from_epoch"]
    assert start >= 3
    assert retry.user_attrs["epochs_trained"] == EPOCHS - start

    # The same trial without interruption, in this process: the same accuracy.
    torch.set_num_threads(1)
    task = get_task("digits")
    params = {**task.default_params, **params}  # what the worker builds with
    run = task.build(params, {**task.default_task_args, "epochs": EPOCHS})
    Trainer(**run.trainer_args, seed=trial_seed(params), device="cpu").fit(
        run.model, run.datamodule
    )
    assert retry.value == run.model.metrics["accuracy"]


@sqlite_only
def test_sigterm_fails_the_trial_for_a_retry_and_exits_cleanly(service: Service) -> None:
    spec = synthetic(
        "term",
        n_trials=3,
        epochs=20,  # ~4 s a trial
        sleep_s=0.2,
        workers=1,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(
            lambda: study_summary(client, "term")["counts"]["RUNNING"] == 1, 60, "a running trial"
        )
        (worker,) = client.get("/studies/term/workers").json()
        os.kill(worker["pid"], signal.SIGTERM)  # what `docker stop` sends
        wait_for(
            lambda: client.get("/studies/term/workers").json()[0]["state"] not in LIVE,
            30,
            "the worker to exit",
        )
        first = client.get("/studies/term/workers").json()[0]
        assert (first["state"], first["exit_code"]) == ("exited", 0)
        interrupted = optuna_trials(service, "term")[0]
        assert interrupted.state.name == "FAIL"  # never left RUNNING
        study = wait_for_status(client, "term", 120, service)
    assert study["status"] == "finished"
    trials = optuna_trials(service, "term")
    assert {0} <= _retried(trials)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3


def test_service_sigkill_and_restart_adopts_workers(service: Service, tmp_path: Path) -> None:
    spec = synthetic(
        "adopt",
        n_trials=12,
        epochs=10,
        sleep_s=0.1,
        workers=2,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(lambda: len(client.get("/studies/adopt/workers").json()) == 2, 30, "two workers")
    os.killpg(service.process.pid, signal.SIGKILL)
    service.process.wait()

    second = start_service(
        service.database_url,
        service.data_dir,
        tmp_path / "second.log",
        {"HELIOS_HPO_SUPERVISOR_INTERVAL_S": "0.2"},
    )
    try:
        with second.client() as client:
            study = wait_for_status(client, "adopt", 180, second)
            wait_for(
                lambda: all(
                    w["state"] not in LIVE for w in client.get("/studies/adopt/workers").json()
                ),
                60,
                "every adopted worker to end",
            )
            workers = client.get("/studies/adopt/workers").json()
    finally:
        stop_service(second)
    assert study["status"] == "finished", study
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 12
    assert study["counts"]["RUNNING"] == 0
    assert len(workers) == 2  # adopted, no duplicates started
    # Not the restarted service's children, yet their clean exits are known: they say so.
    assert [(w["state"], w["exit_code"]) for w in workers] == [("exited", 0), ("exited", 0)]


def test_crashing_workers_back_off_then_fail_the_study_with_the_log(service: Service) -> None:
    spec = synthetic(
        "crashy",
        n_trials=5,
        exit_code=3,  # each worker dies in its first batch
        max_restarts=2,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "crashy", 120, service)
        workers = client.get("/studies/crashy/workers").json()
    assert study["status"] == "failed"
    assert (
        "3 workers in a row failed before training a trial (max_restarts=2)"
        in (study["status_reason"])
    )
    assert "worker 3 for study crashy" in study["status_reason"]  # the last worker's log
    assert [(w["state"], w["exit_code"], w["restarts"]) for w in workers] == [
        ("failed", 3, 0),
        ("failed", 3, 1),
        ("failed", 3, 2),
    ]
    # Exponential backoff between restarts: 1 s, then 2 s.
    for before, after, wait_s in ((workers[0], workers[1], 1.0), (workers[1], workers[2], 2.0)):
        gap = dt.datetime.fromisoformat(after["started_at"]) - dt.datetime.fromisoformat(
            before["ended_at"]
        )
        assert gap.total_seconds() >= wait_s - 0.05
    trials = optuna_trials(service, "crashy")
    assert not [t for t in trials if t.state.name == "RUNNING"]
