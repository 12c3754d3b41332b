"""Studies whose workers run as containers, on an engine stand-in whose containers are
real worker processes (tests/docker_engine.py): GPU leases across hosts, logs through
the container API, and a restarted service that adopts its containers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.launchers.docker import LABEL, instance_label
from service.settings import DockerHost, Settings
from tests.docker_engine import ProcessEngine
from tests.support import wait_for

pytestmark = pytest.mark.slow

IMAGE = "helios-hpo-worker:0.1.0"


@pytest.fixture
def engines(settings: Settings, tmp_path: Path) -> Iterator[dict[str, ProcessEngine]]:
    data_dir = settings.data_dir.resolve()
    found = {name: ProcessEngine(data_dir, tmp_path / "engines" / name) for name in ("a", "b")}
    try:
        yield found
    finally:
        for engine in found.values():
            engine.close()


def _settings(settings: Settings, gpus: dict[str, list[int]]) -> Settings:
    hosts = [DockerHost(name=n, url=f"ssh://me@{n}", gpus=g) for n, g in gpus.items()]
    return settings.model_copy(update={"docker_hosts": hosts, "docker_image": IMAGE})


def _app(settings: Settings, engines: dict[str, ProcessEngine]) -> TestClient:
    return TestClient(create_app(settings, docker_clients=lambda host: engines[host.name]))


def _ended(client: TestClient, name: str, timeout_s: float) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        study: dict[str, Any] = client.get(f"/studies/{name}").json()
        return study if study["status"] != "running" else None

    return wait_for(ended, timeout_s, f"study {name} to end")  # type: ignore[no-any-return]


def test_containers_on_two_hosts_get_distinct_gpus_and_give_them_back(
    settings: Settings, engines: dict[str, ProcessEngine]
) -> None:
    spec = {
        "name": "fleet",
        "task": "synthetic",
        "n_trials": 9,
        "task_args": {"epochs": 3, "sleep_s": 0.05},
        "workers": {"count": 3, "launcher": "docker", "gpus_per_worker": 1},
    }
    with _app(_settings(settings, {"a": [0], "b": [0, 1]}), engines) as client:
        assert client.post("/studies", json=spec).status_code == 201
        running = wait_for(
            lambda: len(w := client.get("/studies/fleet/workers").json()) == 3 and w,
            60,
            "three containers",
        )
        # A running container's log comes through the container API; none is kept yet.
        first = running[0]
        assert not Path(settings.data_dir, "studies", "fleet", "workers").exists()
        wait_for(
            lambda: client.get(f"/workers/{first['id']}/logs").json()["lines"],
            60,
            "the container's log",
        )
        study = _ended(client, "fleet", 180)
        wait_for(
            lambda: not client.app.state.docker.scheduler.in_use(),  # type: ignore[attr-defined]
            30,
            "every lease to end",
        )
        workers = client.get("/studies/fleet/workers").json()
        logs = client.get(f"/workers/{first['id']}/logs?tail=1000").json()["lines"]
    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 9
    assert sorted((w["host"], w["gpus"]) for w in running) == [("a", "0"), ("b", "0"), ("b", "1")]
    assert {w["launcher"] for w in workers} == {"docker"}
    assert {w["state"] for w in workers} == {"exited"}
    for engine in engines.values():
        assert engine.gpu_conflicts == []
        assert engine.containers.all == {}  # each removed once ended
        assert set(engine.images) <= {IMAGE}
    assert any("trial complete" in line or "trial pruned" in line for line in logs)  # kept


def test_a_restarted_service_adopts_its_containers_and_removes_strays(
    settings: Settings, engines: dict[str, ProcessEngine]
) -> None:
    docker_settings = _settings(settings, {"a": [0]})
    long = {
        "name": "long",
        "task": "synthetic",
        "n_trials": 5,
        "task_args": {"epochs": 10, "sleep_s": 0.1},
        "workers": {"count": 1, "launcher": "docker", "gpus_per_worker": 1},
    }
    with _app(docker_settings, engines) as client:
        assert client.post("/studies", json=long).status_code == 201
        wait_for(lambda: client.get("/studies/long/workers").json(), 60, "a container")
    # The service is gone, its container trains on. A stray of this service appears.
    (adopted,) = engines["a"].containers.all.values()
    assert adopted.status == "running"
    stray = engines["a"].containers.stray(
        {f"{LABEL}.instance": instance_label(settings.database_url), f"{LABEL}.worker-id": "99"}
    )

    with _app(docker_settings, engines) as client:
        wait_for(lambda: stray.status == "exited", 30, "the stray to be removed")
        short = {**long, "name": "short", "n_trials": 1}
        assert client.post("/studies", json=short).status_code == 201
        assert client.get("/studies/long/workers").json()[0]["state"] == "running"
        assert _ended(client, "short", 180)["status"] == "finished"
        assert _ended(client, "long", 180)["status"] == "finished"
        (long_worker,) = client.get("/studies/long/workers").json()
        (short_worker,) = client.get("/studies/short/workers").json()
    assert stray.name in engines["a"].removed
    assert engines["a"].gpu_conflicts == []
    # GPU 0 stayed leased to the adopted container: the new one waited for its end.
    assert dt.datetime.fromisoformat(short_worker["started_at"]) >= dt.datetime.fromisoformat(
        long_worker["ended_at"]
    )


def test_crashing_containers_fail_the_study_with_the_kept_log(
    settings: Settings, engines: dict[str, ProcessEngine]
) -> None:
    spec = {
        "name": "crashy",
        "task": "synthetic",
        "n_trials": 5,
        "task_args": {"exit_code": 3},  # each worker dies in its first batch
        "max_restarts": 1,
        "workers": {"count": 1, "launcher": "docker"},
    }
    with _app(_settings(settings, {"a": []}), engines) as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = _ended(client, "crashy", 120)
        workers = client.get("/studies/crashy/workers").json()
    assert study["status"] == "failed"
    assert "2 workers in a row failed before finishing a trial" in study["status_reason"]
    assert "worker 2 for study crashy" in study["status_reason"]  # the kept container log
    assert [(w["state"], w["exit_code"]) for w in workers] == [("failed", 3), ("failed", 3)]
    assert engines["a"].containers.all == {}
