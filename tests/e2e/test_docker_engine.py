"""Workers as real containers on a real Docker engine (Debian's dockerd, started by the
``docker_engine`` fixture), the images built from this checkout's Dockerfiles.

There are no GPUs here: GPU ids are configured and leased, and each container's device
request goes to the engine's NVIDIA driver, whose hook is a stand-in that records the
GPUs the engine gave the container (tests/engine_bin/); no device exists behind them.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.launchers.base import instance_label
from service.launchers.docker import LABEL
from service.studies.lifecycle import finished_trials
from tests.dockerd import (
    DOCKER_BUILD_TIMEOUT,
    DOCKER_GROUP,
    SERVICE_IMAGE,
    WORKER_IMAGE,
    Dockerd,
    cache_dir,
    engine_tools,
)
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
from tests.support import free_port

pytestmark = [pytest.mark.docker, pytest.mark.slow, DOCKER_GROUP, DOCKER_BUILD_TIMEOUT]

GPUS = [0, 1, 2]


def _docker_env(engine: Dockerd, tmp_path: Path, database_url: str) -> dict[str, str]:
    volumes = [f"{tmp_path / 'data'}:/data"]
    if database_url.startswith("sqlite"):  # the same path in the containers
        volumes.append(f"{tmp_path}:{tmp_path}")
    return {
        "HELIOS_HPO_DOCKER_HOSTS": json.dumps([{"name": "local", "url": engine.url, "gpus": GPUS}]),
        "HELIOS_HPO_DOCKER_IMAGE": WORKER_IMAGE,
        "HELIOS_HPO_DOCKER_NETWORK": "host",
        "HELIOS_HPO_DOCKER_VOLUMES": json.dumps(volumes),
        # The service's user: the containers share its SQLite file and data folder.
        "HELIOS_HPO_DOCKER_USER": f"{os.getuid()}:{os.getgid()}",
        "HELIOS_HPO_DOCKER_ENV": json.dumps(
            {
                "HELIOS_HPO_HEARTBEAT_INTERVAL_S": "1",
                "HELIOS_HPO_HEARTBEAT_GRACE_S": "5",
                "OMP_NUM_THREADS": "1",
            }
        ),
    }


@contextlib.contextmanager
def _service(
    engine: Dockerd,
    database_url: str,
    tmp_path: Path,
    log_name: str = "service.log",
    *,
    keep_containers: bool = False,
) -> Iterator[Service]:
    svc = start_service(
        database_url,
        tmp_path / "data",
        tmp_path / log_name,
        _docker_env(engine, tmp_path, database_url),
    )
    try:
        yield svc
    finally:
        stop_service(svc)
        # What a failed test left running would hold names and GPUs in the next one.
        label = f"{LABEL}.instance={instance_label(database_url)}"
        for container in [] if keep_containers else _containers_labelled(engine, label):
            container.remove(force=True)


def _containers_labelled(engine: Dockerd, label: str) -> list[Any]:
    # The supervisor removes ended containers meanwhile: not an error here.
    found: list[Any] = engine.client().containers.list(
        all=True, filters={"label": label}, ignore_removed=True
    )
    return found


def _containers(engine: Dockerd, study: str) -> list[Any]:
    return _containers_labelled(engine, f"{LABEL}.study={study}")


def test_the_images_run_as_users_with_their_entrypoints_and_the_service_is_healthy(
    docker_engine: Dockerd,
) -> None:
    client = docker_engine.client()
    worker = client.images.get(WORKER_IMAGE).attrs["Config"]
    service = client.images.get(SERVICE_IMAGE).attrs["Config"]
    assert worker["User"] == service["User"] == "10001:10001"
    assert worker["Entrypoint"] == ["helios-hpo", "worker"]
    assert "/healthz" in " ".join(service["Healthcheck"]["Test"])
    # The worker's torch is the base image's, not one pip installed over it.
    where = client.containers.run(
        WORKER_IMAGE,
        entrypoint=["python", "-c", "import torch; print(torch.__version__, torch.__file__)"],
        remove=True,
    ).decode()
    version, path = where.split()
    assert version == "2.13.0+cpu"
    assert path.startswith("/usr/local/lib/python3.11/dist-packages/"), path

    port = free_port()
    container = client.containers.run(
        SERVICE_IMAGE,
        command=[
            "sh", "-c",
            f"helios-hpo db upgrade && exec helios-hpo serve --host 127.0.0.1 --port {port}",
        ],
        environment={"HELIOS_HPO_DATABASE_URL": "sqlite:////data/hpo.db"},
        healthcheck={
            "test": ["CMD", "python", "-c",
                     f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/healthz')"],
            "interval": 1_000_000_000, "start_period": 30_000_000_000, "retries": 30,
        },
        network_mode="host",
        volumes={"helios-hpo-test-data": {"bind": "/data"}},  # owned by the image's user
        detach=True,
    )  # fmt: skip
    try:

        def health() -> str:
            container.reload()
            return str(container.attrs["State"]["Health"]["Status"])

        wait_for(lambda: health() == "healthy", 90, "the service container to be healthy")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        container.remove(force=True)
        client.volumes.get("helios-hpo-test-data").remove()


def test_a_study_trains_in_real_containers(
    docker_engine: Dockerd, database_url: str, tmp_path: Path
) -> None:
    url = database_url
    spec = synthetic(
        "boxed", n_trials=9, epochs=3, sleep_s=0.2, workers=3, launcher="docker",
        gpus_per_worker=1,
    )  # fmt: skip
    with _service(docker_engine, url, tmp_path) as svc, svc.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        running = wait_for(
            lambda: (
                len(w := [x for x in client.get("/studies/boxed/workers").json() if x["ref"]]) == 3
                and w
            ),
            120,
            "three containers",
        )
        boxes = _containers(docker_engine, "boxed")
        labels = [c.labels for c in boxes]
        first = running[0]
        # A running container's log comes through the container API, tailed and followed.
        wait_for(
            lambda: client.get(f"/workers/{first['id']}/logs?tail=5").json()["lines"],
            60,
            "the container's log",
        )
        events: list[str] = []
        with client.stream("GET", f"/workers/{first['id']}/logs?follow=true", timeout=180) as s:
            ended = False
            for line in s.iter_lines():
                ended = ended or line == "event: end"
                if line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    if ended:
                        break
        study = wait_for_status(client, "boxed", 240, svc)
        wait_for(lambda: not _containers(docker_engine, "boxed"), 60, "the containers removed")
        workers = client.get("/studies/boxed/workers").json()
        kept = client.get(f"/workers/{first['id']}/logs?tail=1000").json()["lines"]
        # Every lease was given back: one worker may now take all three GPUs.
        after = synthetic("after", n_trials=1, epochs=1, launcher="docker", gpus_per_worker=3)
        assert client.post("/studies", json=after).status_code == 201
        assert wait_for_status(client, "after", 120, svc)["status"] == "finished"
    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 9
    assert {label[f"{LABEL}.instance"] for label in labels} == {instance_label(url)}
    assert sorted(label[f"{LABEL}.gpus"] for label in labels) == ["0", "1", "2"]
    assert sorted(w["gpus"] for w in running) == ["0", "1", "2"]
    # Each lease reached the engine as a device request for exactly its GPU.
    given = docker_engine.gpus_given()
    assert {c.id: given.get(c.id) for c in boxes} == {
        c.id: c.labels[f"{LABEL}.gpus"] for c in boxes
    }
    assert {w["state"] for w in workers} == {"exited"}
    assert events[-1] == "worker ended"
    assert any(" trial=" in e for e in events[:-1])
    assert any("trial complete" in line or "trial pruned" in line for line in kept)


def test_killed_and_stopped_containers_retry_their_trials(
    docker_engine: Dockerd, postgres_url: str, tmp_path: Path
) -> None:
    # 60 steps of 0.1 s: a trial seen early in its run is still running when it is hit.
    spec = synthetic(
        "rough", n_trials=4, epochs=60, sleep_s=0.1, workers=2, launcher="docker",
        max_retries=3,
    )  # fmt: skip
    with _service(docker_engine, postgres_url, tmp_path) as svc, svc.client() as client:
        assert client.post("/studies", json=spec).status_code == 201

        def training() -> tuple[list[Any], list[int]] | None:
            trials = client.get("/studies/rough/trials?state=RUNNING").json()["items"]
            early = [t["number"] for t in trials if 1 <= len(t["intermediate_values"]) <= 20]
            found = [c for c in _containers(docker_engine, "rough") if c.status == "running"]
            return (found, early) if len(early) == 2 and len(found) == 2 else None

        (killed, stopped), hit = wait_for(training, 120, "two trials early in their run")
        killed.kill()  # SIGKILL: its trial is failed after the grace period, then retried
        stopped.stop(timeout=20)  # SIGTERM: its trial is failed and re-queued at once
        study = wait_for_status(client, "rough", 300, svc)
        trials = client.get("/studies/rough/trials").json()["items"]
    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 4
    assert sorted(t["number"] for t in trials if t["state"] == "FAIL") == sorted(hit)


def test_a_killed_containers_trial_is_retried_from_its_checkpoint(
    docker_engine: Dockerd, postgres_url: str, tmp_path: Path
) -> None:
    params = {
        "lr": 0.01, "hidden": 64, "dropout": 0.0, "optimizer": "adam", "batch_size": 32,
        "beta1": 0.9, "beta2": 0.999,
    }  # fmt: skip
    spec = {
        "name": "resumed", "task": "digits", "n_trials": 1, "task_args": {"epochs": 60},
        "enqueue_trials": [params], "workers": {"count": 1, "launcher": "docker"},
    }  # fmt: skip
    # The container writes checkpoints to the service's data folder (a bind mount).
    chkpts = tmp_path / "data" / "studies" / "resumed" / "trials" / "0"
    with _service(docker_engine, postgres_url, tmp_path) as svc, svc.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(lambda: latest_checkpoint_epoch(chkpts) >= 3, 180, "a checkpoint at epoch >= 3")
        (container,) = [c for c in _containers(docker_engine, "resumed") if c.status == "running"]
        container.kill()
        study = wait_for_status(client, "resumed", 300, svc)
        first, retry = optuna_trials(svc, "resumed")
    assert study["status"] == "finished", study["status_reason"]
    assert (first.state.name, retry.state.name) == ("FAIL", "COMPLETE")
    assert retry.params == first.params
    assert retry.user_attrs["resumed_from_epoch"] >= 3
    assert retry.user_attrs["epochs_trained"] == 60 - retry.user_attrs["resumed_from_epoch"]


def test_a_container_that_crashes_at_start_fails_the_study_with_its_log(
    docker_engine: Dockerd, postgres_url: str, tmp_path: Path
) -> None:
    spec = synthetic(
        "crashy", n_trials=3, exit_code=3, max_restarts=1, workers=1, launcher="docker"
    )
    with _service(docker_engine, postgres_url, tmp_path) as svc, svc.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "crashy", 180, svc)
        workers = client.get("/studies/crashy/workers").json()
    assert study["status"] == "failed"
    assert "2 workers in a row failed before training a trial" in study["status_reason"]
    assert "worker 2 for study crashy" in study["status_reason"]  # the container's log
    assert [(w["state"], w["exit_code"]) for w in workers] == [("failed", 3), ("failed", 3)]
    assert _containers(docker_engine, "crashy") == []


def test_a_killed_service_adopts_its_containers_and_removes_strays(
    docker_engine: Dockerd, postgres_url: str, tmp_path: Path
) -> None:
    spec = synthetic(
        "adopted", n_trials=3, epochs=20, sleep_s=0.1, workers=1, launcher="docker",
        gpus_per_worker=3,
    )  # fmt: skip
    with _service(docker_engine, postgres_url, tmp_path, "first.log", keep_containers=True) as svc:
        with svc.client() as client:
            assert client.post("/studies", json=spec).status_code == 201
            wait_for(
                lambda: [c for c in _containers(docker_engine, "adopted") if c.status == "running"],
                120,
                "a running container",
            )
        os.killpg(svc.process.pid, signal.SIGKILL)
        svc.process.wait()
    (adopted,) = _containers(docker_engine, "adopted")
    stray = docker_engine.client().containers.run(
        WORKER_IMAGE,
        entrypoint=["sleep", "600"],
        labels={f"{LABEL}.instance": instance_label(postgres_url), f"{LABEL}.worker-id": "99"},
        network_mode="host",
        detach=True,
    )
    with (
        _service(docker_engine, postgres_url, tmp_path, "second.log") as svc,
        svc.client() as client,
    ):
        wait_for(lambda: stray.id not in _ids(docker_engine), 60, "the stray to be removed")
        other = {**spec, "name": "waits", "n_trials": 1}
        assert client.post("/studies", json=other).status_code == 201
        study = wait_for_status(client, "adopted", 300, svc)
        assert wait_for_status(client, "waits", 300, svc)["status"] == "finished"
        (first,) = client.get("/studies/adopted/workers").json()
        (second,) = client.get("/studies/waits/workers").json()
    assert study["status"] == "finished", study["status_reason"]
    assert first["ref"].endswith(adopted.id)  # adopted, not started again
    # All three GPUs stayed leased to the adopted container: the next one waited for them.
    assert second["started_at"] >= first["ended_at"]


def _ids(engine: Dockerd) -> set[str]:
    # ignore_removed: the SDK inspects each container listed; one removed meanwhile (the
    # stray this test waits for) is not an error.
    return {c.id for c in engine.client().containers.list(all=True, ignore_removed=True)}


def test_the_study_finishes_after_the_engine_comes_back(
    docker_engine: Dockerd, postgres_url: str, tmp_path: Path
) -> None:
    spec = synthetic(
        "outage", n_trials=4, epochs=10, sleep_s=0.1, workers=1, launcher="docker",
        max_retries=3,
    )  # fmt: skip
    with _service(docker_engine, postgres_url, tmp_path) as svc, svc.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(
            lambda: finished_trials(study_summary(client, "outage")["counts"]) >= 1,
            120,
            "a finished trial",
        )
        docker_engine.stop()
        try:
            down_until = time.monotonic() + 10  # the outage lasts 10 s
            while time.monotonic() < down_until:  # the service keeps serving meanwhile
                assert client.get("/studies/outage").status_code == 200
                assert client.get("/studies/outage/workers").status_code == 200
                time.sleep(0.5)
        finally:
            docker_engine.start()
        study = wait_for_status(client, "outage", 300, svc)
    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 4


@pytest.fixture
def second_engine(docker_engine: Dockerd, tmp_path: Path) -> Iterator[Dockerd]:
    """Another dockerd on its own socket, standing for a second GPU host, with the
    first one's worker image."""
    tools = engine_tools()
    engine = Dockerd(tools["dockerd"], tmp_path / "engine-b", cache_dir() / "docker-b")
    engine.start()
    try:
        engine.remove_containers()
        wanted = docker_engine.client().images.get(WORKER_IMAGE).id
        if not _has_image(engine, wanted):
            save = subprocess.Popen(  # noqa: S603
                [tools["docker"], "save", WORKER_IMAGE], env=docker_engine.env,
                stdout=subprocess.PIPE,
            )  # fmt: skip
            subprocess.run(  # noqa: S603
                [tools["docker"], "load"], env=engine.env, stdin=save.stdout, check=True,
                capture_output=True, timeout=600,
            )  # fmt: skip
            assert save.wait() == 0
        yield engine
    finally:
        engine.stop()


def _has_image(engine: Dockerd, image_id: str) -> bool:
    return any(image.id == image_id for image in engine.client().images.list())


def test_workers_spread_over_two_hosts_and_survive_one_going_down(
    docker_engine: Dockerd, second_engine: Dockerd, postgres_url: str, tmp_path: Path
) -> None:
    env = _docker_env(docker_engine, tmp_path, postgres_url)
    env["HELIOS_HPO_DOCKER_HOSTS"] = json.dumps(
        [
            {"name": "a", "url": docker_engine.url, "gpus": [0]},
            {"name": "b", "url": second_engine.url, "gpus": [0, 1]},
        ]
    )
    spec = synthetic(
        "spread", n_trials=10, epochs=10, sleep_s=0.1, workers=3, launcher="docker",
        gpus_per_worker=1, max_retries=3,
    )  # fmt: skip
    svc = start_service(postgres_url, tmp_path / "data", tmp_path / "service.log", env)
    try:
        with svc.client() as client:
            assert client.post("/studies", json=spec).status_code == 201
            running = wait_for(
                lambda: len(w := [x for x in client.get("/studies/spread/workers").json()
                                  if x["state"] == "running"]) == 3 and w,
                120,
                "three containers",
            )  # fmt: skip
            wait_for(
                lambda: client.get("/studies/spread").json()["counts"]["RUNNING"] >= 2,
                60,
                "trials in training",
            )
            second_engine.stop()  # host b goes down with its two workers
            study = wait_for_status(client, "spread", 300, svc)
    finally:
        stop_service(svc)
    assert sorted((w["host"], w["gpus"]) for w in running) == [("a", "0"), ("b", "0"), ("b", "1")]
    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 10
