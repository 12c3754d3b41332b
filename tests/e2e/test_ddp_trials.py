"""Trials that train on two CPU ranks (gloo), through the service."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from service.launchers.base import instance_label
from tests.databases import sqlite_only
from tests.e2e.harness import (
    Service,
    latest_checkpoint_epoch,
    optuna_trials,
    wait_for,
    wait_for_status,
    workers_once_ended,
)

PARAMS = {
    "lr": 0.01, "hidden": 64, "dropout": 0.0, "optimizer": "adam", "batch_size": 16,
    "beta1": 0.9, "beta2": 0.999,
}  # fmt: skip


pytestmark = [pytest.mark.slow, sqlite_only]  # rank 0's database work is any worker's


def _ranks_of(marker: str) -> dict[int, int]:
    """The worker's rank processes: rank -> pid (by the worker's environment)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            env = dict(
                var.split("=", 1)
                for var in (entry / "environ").read_bytes().decode(errors="replace").split("\0")
                if "=" in var
            )
        except OSError:
            continue
        if env.get("HELIOS_HPO_WORKER") == marker and "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def _worker_logs(svc: Service, study: str) -> str:
    folder = svc.data_dir / "studies" / study / "workers"
    return "\n".join(p.read_text() for p in sorted(folder.glob("worker-*.log")))


def test_a_study_trains_on_two_ranks_and_sigterm_requeues_the_trial(service: Service) -> None:
    spec = {
        "name": "ddp",
        "task": "digits",
        "n_trials": 3,
        "task_args": {"epochs": 12},
        "sampler": {"name": "TPESampler", "args": {"seed": 0}},
        "enqueue_trials": [PARAMS],
        "workers": {"count": 1, "ranks_per_trial": 2},
    }
    chkpts = service.data_dir / "studies" / "ddp" / "trials" / "0"
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201, "created"
        wait_for(lambda: latest_checkpoint_epoch(chkpts) >= 1, 120, "a checkpoint at epoch 1")
        (first,) = client.get("/studies/ddp/workers").json()
        os.kill(first["pid"], signal.SIGTERM)  # the ranks' parent's: what `docker stop` sends
        study = wait_for_status(client, "ddp", 180, service)
        workers = workers_once_ended(client, "ddp", 120, service)
    assert study["status"] == "finished", study
    trials = optuna_trials(service, "ddp")
    assert trials[0].state.name == "FAIL"  # stopped mid-trial, never left RUNNING
    retries = [t for t in trials if t.system_attrs.get("retry_history") == [0]]
    assert [t.state.name for t in retries] == ["COMPLETE"]
    assert retries[0].user_attrs["resumed_from_epoch"] >= 1
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3
    assert retries[0].value > 0.9  # digits learns on two shards as on one
    assert not _ranks_of(f"{_instance(service)}:{first['id']}")  # every rank stopped
    log = _worker_logs(service, "ddp")
    assert "training each trial on 2 ranks" in log
    assert re.search(r"rank=1 trial=\d+ service.worker.training: training on the CPU", log)
    # Rank 0 alone talks to the database; rank 1 made no statement at all.
    assert re.search(r"rank 0 made [1-9]\d* database statements", log), log[-3000:]
    assert re.search(r"rank=1 .*rank 1 made 0 database statements", log), log[-3000:]
    assert not re.search(r"rank 1 made [1-9]", log)  # neither the stopped nor the new rank 1
    assert workers[-1]["exit_code"] == 0, workers
    # Stopped by SIGTERM, as the service stops a study's workers: a clean exit, whatever
    # the ranks (torchrun exited 1 after any SIGTERM).
    assert (workers[0]["state"], workers[0]["exit_code"]) == ("exited", 0), workers


def test_rank_1_killed_mid_trial_retries_from_the_checkpoint(service: Service) -> None:
    epochs = 40
    spec = {
        "name": "ddp-kill",
        "task": "digits",
        "n_trials": 1,
        "task_args": {"epochs": epochs},
        "enqueue_trials": [PARAMS],
        "workers": {"count": 1, "ranks_per_trial": 2},
    }
    chkpts = service.data_dir / "studies" / "ddp-kill" / "trials" / "0"
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201, "created"
        wait_for(lambda: latest_checkpoint_epoch(chkpts) >= 2, 120, "a checkpoint at epoch 2")
        (worker,) = client.get("/studies/ddp-kill/workers").json()
        ranks = _ranks_of(f"{_instance(service)}:{worker['id']}")
        assert set(ranks) == {0, 1}, ranks
        os.kill(ranks[1], signal.SIGKILL)
        study = wait_for_status(client, "ddp-kill", 240, service)
        workers = workers_once_ended(client, "ddp-kill", 120, service)
    assert study["status"] == "finished", study
    first, retry = optuna_trials(service, "ddp-kill")
    assert first.state.name == "FAIL"  # the whole trial failed, not one rank of it
    assert retry.state.name == "COMPLETE"
    assert retry.system_attrs["retry_history"] == [0]
    start = retry.user_attrs["resumed_from_epoch"]
    assert start >= 2
    assert retry.user_attrs["epochs_trained"] == epochs - start
    # The killed rank took its worker down (no rank left waiting); a new one finished.
    assert [w["exit_code"] != 0 for w in workers] == [True, False], workers
    assert not _ranks_of(f"{_instance(service)}:{worker['id']}")


def _instance(svc: Service) -> str:
    return instance_label(svc.database_url)
