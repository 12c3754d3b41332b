"""Workers as Slurm jobs on a real single-node cluster with two fake GPUs (tests/slurm.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.launchers.base import instance_label
from tests.e2e.harness import (
    Service,
    latest_checkpoint_epoch,
    optuna_trials,
    start_service,
    stop_service,
    wait_for,
    wait_for_status,
)
from tests.slurm import SLURM_GROUP, SlurmCluster, slurm_cluster
from tests.specs import synthetic

pytestmark = [pytest.mark.slow, SLURM_GROUP]

DIGITS = {
    "lr": 0.01, "hidden": 64, "dropout": 0.0, "optimizer": "adam", "batch_size": 16,
    "beta1": 0.9, "beta2": 0.999,
}  # fmt: skip


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def no_jobs_left(slurm: SlurmCluster) -> Iterator[None]:
    """A test's jobs outlive its service (as they would a restart): cancel them after."""
    yield
    slurm.cancel_all()


@pytest.fixture
def service_env(slurm: SlurmCluster) -> dict[str, str]:
    return {"HELIOS_HPO_SLURM_ENABLED": "true", "SLURM_CONF": slurm.env["SLURM_CONF"]}


def _workers(client: httpx.Client, study: str) -> list[dict[str, Any]]:
    workers: list[dict[str, Any]] = client.get(f"/studies/{study}/workers").json()
    return workers


def _log(svc: Service, study: str, worker_id: int) -> str:
    path = svc.data_dir / "studies" / study / "workers" / f"worker-{worker_id}.log"
    return path.read_text() if path.exists() else ""


def _our_jobs(
    slurm: SlurmCluster, svc: Service, states: tuple[str, ...] = ("PENDING", "RUNNING")
) -> list[Any]:
    """The jobs of ``svc`` (its instance, by name) in ``states``."""
    prefix = f"helios-hpo-{instance_label(svc.database_url)}-"
    return [j for j in slurm.jobs() if j["job_state"] in states and j["name"].startswith(prefix)]


def test_three_workers_on_two_gpus_queue_and_share_no_secret(
    service: Service, slurm: SlurmCluster
) -> None:
    spec = synthetic(
        "slurm-study",
        # One worker runs 2 trials of ~20 s, one 1: the waiting job starts when the
        # second exits, while the first trains its last trial. That window is one trial
        # long: with trials of 6 s a loaded machine started the job after the study ended.
        n_trials=3,
        epochs=20,
        sleep_s=1.0,
        pruner={"name": "NopPruner"},  # a pruned trial would end before the waiting job ran
        workers={"count": 3, "gpus_per_worker": 1, "launcher": "slurm"},
    )
    workers: list[dict[str, Any]] = []
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201

        def two_run_one_waits() -> bool:
            workers[:] = _workers(client, "slurm-study")
            if sorted(w["state"] for w in workers) != ["pending", "running", "running"]:
                return False
            # A job the scheduler has not looked at yet has no reason ("queued"): wait for one.
            return all(w["state_reason"] != "queued" for w in workers if w["state"] == "pending")

        wait_for(two_run_one_waits, 60, "two workers running, one pending in Slurm's queue")
        running = [w for w in workers if w["state"] == "running"]
        pending = [w for w in workers if w["state"] == "pending"]
        (waiting,) = pending
        assert waiting["state_reason"] in ("Resources", "Priority"), waiting
        # What Slurm prints of the jobs holds no database URL.
        for job in _our_jobs(slurm, service):
            shown = slurm.run("scontrol", "show", "job", "-d", str(job["job_id"]))
            assert service.database_url not in shown
        assert service.database_url not in json.dumps(slurm.jobs())
        study = wait_for_status(client, "slurm-study", 180, service)
        workers = _workers(client, "slurm-study")
        # The jobs' logs, from the shared folder, through the logs endpoints.
        busiest = max(workers, key=lambda w: w["trials_run"])
        tail = client.get(f"/workers/{busiest['id']}/logs?tail=3").json()["lines"]
        assert len(tail) == 3, tail
        url = f"/workers/{busiest['id']}/logs"
        full = client.get(f"{url}?tail=10000").json()["lines"]
        number = re.findall(r" trial=(\d+) ", "\n".join(full))[0]
        lines = client.get(f"{url}?trial={number}").json()["lines"]
        assert lines == [line for line in full if f" trial={number} " in line]
    assert study["status"] == "finished", study
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 3
    assert len(optuna_trials(service, "slurm-study")) == 3  # no trial lost or doubled
    seen = {}
    for worker in workers:
        match = re.search(
            r"CUDA_VISIBLE_DEVICES='(\d)'", _log(service, "slurm-study", worker["id"])
        )
        assert match, _log(service, "slurm-study", worker["id"])
        seen[worker["id"]] = match.group(1)
    first, second = (w["id"] for w in running)
    assert {seen[first], seen[second]} == {"0", "1"}  # each running job its own GPU
    assert seen[waiting["id"]] in ("0", "1")  # and the waiting one ran after
    env_file = next((service.data_dir / "slurm").glob("worker-*.env"))
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600


def test_scancel_node_down_and_restart_retry_and_leave_no_duplicates(
    service: Service, slurm: SlurmCluster, tmp_path: Path
) -> None:
    spec = {
        "name": "slurm-faults",
        "task": "digits",
        "n_trials": 3,
        "task_args": {"epochs": 40},
        "enqueue_trials": [DIGITS, DIGITS | {"hidden": 32}],
        "pruner": {"name": "NopPruner"},  # every trial trains to the end
        "workers": {"count": 1, "launcher": "slurm"},
    }
    chkpts = service.data_dir / "studies" / "slurm-faults" / "trials"
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        # An admin cancels the job mid-trial: the trial fails and resumes from its checkpoint.
        wait_for(lambda: latest_checkpoint_epoch(chkpts / "0") >= 2, 120, "trial 0 at epoch 2")
        (job,) = _our_jobs(slurm, service, ("RUNNING",))
        slurm.run("scancel", str(job["job_id"]))
        # The node goes down mid-trial and comes back: trials retried, the study finishes.
        # Trial 1, the second enqueued, runs next (trial 0's retry after it).
        wait_for(lambda: latest_checkpoint_epoch(chkpts / "1") >= 1, 120, "trial 1 training")
        slurm.set_node("down")
        wait_for(
            lambda: not _our_jobs(slurm, service, ("RUNNING",)), 60, "the job to end with its node"
        )
        slurm.set_node("resume")
    # The service killed and restarted: it adopts its job, starts no second one, and
    # cancels a stray of its own name.
    os.killpg(service.process.pid, signal.SIGKILL)
    service.process.wait()
    stray = slurm.run(
        "sbatch",
        "--parsable",
        "--output=/dev/null",
        f"--job-name=helios-hpo-{instance_label(service.database_url)}-999",
        "--wrap",
        "sleep 300",
    ).strip()
    svc = start_service(
        service.database_url, service.data_dir, tmp_path / "service2.log", service.env
    )
    try:
        with svc.client() as client:
            wait_for(
                lambda: all(j["job_id"] != int(stray) for j in _our_jobs(slurm, service)),
                30,
                "the stray job to be cancelled",
            )
            assert len(_our_jobs(slurm, service)) <= 1
            study = wait_for_status(client, "slurm-faults", 240, svc)
    finally:
        stop_service(svc)
    assert study["status"] == "finished", study
    trials = optuna_trials(svc, "slurm-faults")
    retries = {
        t.system_attrs["retry_history"][0]: t for t in trials if "retry_history" in t.system_attrs
    }
    assert {0, 1} <= set(retries), [(t.number, t.state.name) for t in trials]
    assert retries[0].user_attrs["resumed_from_epoch"] >= 2
    assert retries[1].user_attrs["resumed_from_epoch"] >= 1
    assert sum(t.state.name == "COMPLETE" for t in trials) == 3


def test_two_ranks_in_one_job_and_a_data_dir_the_nodes_do_not_see(
    service: Service, slurm: SlurmCluster
) -> None:
    spec = {
        "name": "slurm-ddp",
        "task": "digits",
        "n_trials": 2,
        "task_args": {"epochs": 2},
        "workers": {
            "count": 1,
            "gpus_per_worker": 2,
            "ranks_per_trial": "auto",
            "launcher": "slurm",
        },
    }
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "slurm-ddp", 180, service)
        (worker,) = _workers(client, "slurm-ddp")
        log = _log(service, "slurm-ddp", worker["id"])
        assert study["status"] == "finished", (study, log[-3000:])
        assert "CUDA_VISIBLE_DEVICES='0,1'" in log  # the job's two GPUs, one per rank
        assert "training each trial on 2 ranks" in log
        assert re.search(r"rank=1 .*rank 1 made 0 database statements", log), log[-3000:]

        # The nodes stop seeing the data directory: the study fails at once, saying why.
        next((service.data_dir / "slurm").glob("probe-*")).unlink()
        spec = synthetic("slurm-unshared", workers={"count": 1, "launcher": "slurm"})
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "slurm-unshared", 60, service)
        unshared = _workers(client, "slurm-unshared")
    assert study["status"] == "failed"
    assert "its workers cannot run here" in study["status_reason"]
    assert (
        "must be on a filesystem shared by the service and the Slurm nodes"
        in (study["status_reason"])
    )
    assert [w["restarts"] for w in unshared] == [0]  # failed at once: no restart loop
