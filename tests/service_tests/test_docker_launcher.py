"""The Docker launcher without a Docker engine: container specs, settings, spec checks,
and what a study does when its Docker host cannot be reached."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.cli import _parser
from service.launchers.docker import LABEL, container_spec, docker_launcher, instance_label
from service.launchers.gpus import Lease
from service.settings import DockerHost, Settings
from tests.support import wait_for

WORKER_ENTRYPOINT = ["helios-hpo", "worker"]  # docker/worker.Dockerfile


def _spec(lease: Lease, network: str | None = None) -> dict[str, object]:
    return container_spec(
        study="cifar-sweep",
        worker_id=7,
        lease=lease,
        image="helios-hpo-worker:0.1.0",
        instance="abc123",
        database_url="postgresql://helios:secret@db:5432/helios",
        env={"NCCL_DEBUG": "WARN"},
        volumes=["helios-hpo_data:/data"],
        network=network,
    )


def test_a_container_gets_exactly_its_leased_gpus() -> None:
    spec = _spec(Lease("gpu1", (2, 3)))
    requests = spec["device_requests"]
    assert isinstance(requests, list)
    (request,) = requests
    assert request["Driver"] == "nvidia"
    assert request["DeviceIDs"] == ["2", "3"]
    assert request["Capabilities"] == [["gpu"]]
    assert "Count" not in request or request["Count"] in (0, None)
    assert spec["labels"] == {
        f"{LABEL}.instance": "abc123",
        f"{LABEL}.study": "cifar-sweep",
        f"{LABEL}.worker-id": "7",
        f"{LABEL}.gpus": "2,3",
    }
    assert _spec(Lease("gpu1", ()))["device_requests"] == []


def test_the_container_runs_a_real_worker_command_without_secrets_in_it() -> None:
    spec = _spec(Lease("gpu1", (0,)), network="hpo")
    command = spec["command"]
    assert isinstance(command, list)
    args = _parser().parse_args([*WORKER_ENTRYPOINT[1:], *command])
    assert (args.command, args.study, args.worker_id) == ("worker", "cifar-sweep", 7)
    assert "secret" not in " ".join(command)
    env = spec["environment"]
    assert isinstance(env, dict)
    assert env["HELIOS_HPO_DATABASE_URL"] == "postgresql://helios:secret@db:5432/helios"
    assert env["NCCL_DEBUG"] == "WARN"
    assert spec["network"] == "hpo"
    assert spec["volumes"] == ["helios-hpo_data:/data"]
    assert spec["name"] == "helios-hpo-cifar-sweep-7"
    assert spec["stop_signal"] == "SIGTERM"  # the worker fails its trial for a retry


def test_docker_hosts_come_from_json_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = [
        {"name": "gpu1", "url": "ssh://me@gpu1", "gpus": [0, 1, 2, 3]},
        {"name": "gpu2", "url": "tcp://gpu2:2376", "gpus": [0, 1], "tls": True},
    ]
    monkeypatch.setenv("HELIOS_HPO_DOCKER_HOSTS", json.dumps(hosts))
    monkeypatch.setenv("HELIOS_HPO_DOCKER_IMAGES", '["my-team/worker:3"]')
    settings = Settings()
    assert [h.name for h in settings.docker_hosts] == ["gpu1", "gpu2"]
    launcher = docker_launcher(settings)
    assert launcher.scheduler.capacity() == 4
    assert launcher.instance == instance_label(settings.database_url)
    with pytest.raises(ValueError, match="unix://, tcp:// or ssh://"):
        DockerHost(name="x", url="http://gpu1:2375")


@pytest.fixture
def docker_settings(settings: Settings, tmp_path: Path) -> Settings:
    """A service whose one Docker host is a socket nothing listens on."""
    return settings.model_copy(
        update={
            "docker_hosts": [
                DockerHost(name="gone", url=f"unix://{tmp_path / 'docker.sock'}", gpus=[0, 1])
            ],
            "docker_images": ["my-team/worker:3"],
        }
    )


@pytest.mark.parametrize(
    ("workers", "field", "reason"),
    [
        ({"launcher": "docker", "image": "evil/miner:1"}, "workers.image", "not an allowed image"),
        ({"launcher": "docker", "gpus_per_worker": 3}, "workers.gpus_per_worker", "has 2"),
        ({"launcher": "local", "image": "my-team/worker:3"}, "workers.image", "only containers"),
    ],
)
def test_bad_container_specs_are_refused(
    docker_settings: Settings, workers: dict[str, object], field: str, reason: str
) -> None:
    with TestClient(create_app(docker_settings, supervise=False)) as client:
        spec = {"name": "boxed", "task": "synthetic", "workers": workers}
        response = client.post("/studies", json=spec)
        assert response.status_code == 422, response.text
        (error,) = response.json()["errors"]
        assert error["field"] == field
        assert reason in error["message"]
        assert client.get("/studies/boxed").status_code == 404


def test_docker_workers_need_docker_hosts(client: TestClient) -> None:
    spec = {"name": "boxed", "task": "synthetic", "workers": {"launcher": "docker"}}
    response = client.post("/studies", json=spec)
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "workers.launcher"
    assert "HELIOS_HPO_DOCKER_HOSTS" in error["message"]


def test_an_unreachable_docker_host_fails_the_study_with_the_reason(
    docker_settings: Settings,
) -> None:
    spec = {
        "name": "no-engine",
        "task": "synthetic",
        "max_restarts": 1,
        "workers": {"launcher": "docker", "gpus_per_worker": 1, "image": "my-team/worker:3"},
    }
    with TestClient(create_app(docker_settings)) as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for(
            lambda: (s := client.get("/studies/no-engine").json())["status"] == "failed" and s,
            30,
            "the study to fail",
        )
        assert "could not start a docker worker on gone" in study["status_reason"]
        workers = client.get("/studies/no-engine/workers").json()
        assert len(workers) == 2  # the first try and one restart, 1 s apart
        assert {w["state"] for w in workers} == {"failed"}
        assert all(len(w["gpus"]) == 1 for w in workers)
        logs = client.get(f"/workers/{workers[0]['id']}/logs").json()
        assert "could not start a docker worker on gone" in logs["lines"][0]


@pytest.mark.docker
@pytest.mark.postgres
def test_a_study_trains_in_containers_on_a_real_engine(settings: Settings) -> None:
    """Runs where DOCKER_HOST reaches an engine that has the worker image
    (HELIOS_HPO_TEST_DOCKER_IMAGE, default helios-hpo-worker:0.1.0) and the
    containers reach the test database over the host network."""
    import docker.errors

    import docker

    url = os.environ.get("DOCKER_HOST", "")
    image = os.environ.get("HELIOS_HPO_TEST_DOCKER_IMAGE", "helios-hpo-worker:0.1.0")
    if not url or settings.database_url.startswith("sqlite"):
        pytest.skip("no Docker engine (DOCKER_HOST) or no PostgreSQL to share with containers")
    try:
        engine = docker.DockerClient(base_url=url)
        engine.images.get(image)
    except docker.errors.DockerException as exc:
        pytest.skip(f"Docker engine at {url} or image {image} not available: {exc}")
    docker_settings = settings.model_copy(
        update={
            "docker_hosts": [DockerHost(name="engine", url=url, gpus=[])],
            "docker_image": image,
            "docker_network": "host",
            "docker_volumes": [],
        }
    )
    spec = {
        "name": "in-containers",
        "task": "synthetic",
        "n_trials": 6,
        "workers": {"count": 2, "launcher": "docker"},
    }
    with TestClient(create_app(docker_settings)) as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for(
            lambda: (s := client.get("/studies/in-containers").json())["status"] != "running" and s,
            300,
            "the study to finish",
        )
        assert study["status"] == "finished", study["status_reason"]
        assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 6
        workers = client.get("/studies/in-containers/workers").json()
        assert {w["launcher"] for w in workers} == {"docker"}
        logs = client.get(f"/workers/{workers[0]['id']}/logs?tail=200").json()
        assert any("trial complete" in line or "trial pruned" in line for line in logs["lines"])
    label = f"{LABEL}.study=in-containers"
    assert engine.containers.list(all=True, filters={"label": label}) == []  # removed
