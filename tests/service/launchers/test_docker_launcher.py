"""The Docker launcher without a Docker engine: container specs (GPU device requests
included, which need the NVIDIA runtime no engine here has), settings, spec checks, and
what a study does when its Docker host cannot be reached. Real containers:
tests/e2e/test_docker_engine.py."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests
from fastapi.testclient import TestClient

from service import __version__
from service.api import create_app
from service.cli import _parser
from service.launchers.base import LOST, UNREACHABLE, instance_label
from service.launchers.docker import LABEL, container_spec, docker_launcher
from service.launchers.gpus import Lease
from service.settings import DockerHost, DockerSettings, Settings
from tests.dockerd import DOCKER_BUILD_TIMEOUT, DOCKER_GROUP, WORKER_IMAGE, Dockerd
from tests.specs import synthetic
from tests.support import wait_for

pytestmark = [DOCKER_GROUP, DOCKER_BUILD_TIMEOUT]

WORKER_ENTRYPOINT = ["helios-hpo", "worker"]  # docker/worker.Dockerfile


def _spec(lease: Lease, network: str | None = None) -> dict[str, object]:
    return container_spec(
        study="cifar-sweep",
        worker_id=7,
        lease=lease,
        image=f"helios-hpo-worker:{__version__}",
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


def test_hosts_whose_runtime_is_nvidia_get_the_gpus_by_environment() -> None:
    spec = container_spec(
        study="s", worker_id=1, lease=Lease("gpu1", (1, 3)), image="i", instance="x",
        database_url="sqlite:///x.db", env={}, volumes=[], network=None, gpu_devices="env",
    )  # fmt: skip
    assert spec["device_requests"] == []
    assert spec["environment"]["NVIDIA_VISIBLE_DEVICES"] == "1,3"
    assert spec["labels"][f"{LABEL}.gpus"] == "1,3"
    assert "user" not in spec  # the image's own user


def test_containers_may_run_as_the_services_user() -> None:
    spec = container_spec(
        study="s", worker_id=1, lease=Lease("h", ()), image="i", instance="x",
        database_url="sqlite:////srv/hpo.db", env={}, volumes=["/srv:/srv"], network=None,
        user="1000:1000",
    )  # fmt: skip
    assert spec["user"] == "1000:1000"


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
    assert spec["name"] == "helios-hpo-abc123-cifar-sweep-7"  # per service: hosts are shared
    assert spec["stop_signal"] == "SIGTERM"  # the worker fails its trial for a retry


def test_docker_hosts_come_from_json_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    hosts = [
        {"name": "gpu1", "url": "ssh://me@gpu1", "gpus": [0, 1, 2, 3]},
        {"name": "gpu2", "url": "tcp://gpu2:2376", "gpus": [0, 1], "tls": True},
    ]
    monkeypatch.setenv("HELIOS_HPO_DOCKER_HOSTS", json.dumps(hosts))
    monkeypatch.setenv("HELIOS_HPO_DOCKER_IMAGES", '["my-team/worker:3"]')
    settings = Settings()
    assert [h.name for h in settings.docker.hosts] == ["gpu1", "gpu2"]
    assert settings.docker.images == ["my-team/worker:3"]
    launcher = docker_launcher(settings)
    assert launcher is not None
    assert launcher.scheduler.capacity() == 4
    assert launcher.instance == instance_label(settings.database_url)
    with pytest.raises(ValueError, match="unix://, tcp:// or ssh://"):
        DockerHost(name="x", url="http://gpu1:2375")


@pytest.fixture
def docker_settings(settings: Settings, tmp_path: Path) -> Settings:
    """A service whose one Docker host is a socket nothing listens on."""
    host = DockerHost(name="gone", url=f"unix://{tmp_path / 'docker.sock'}", gpus=[0, 1])
    return settings.model_copy(
        update={
            "docker": DockerSettings(hosts=[host], images=["my-team/worker:3"]),
            "launcher_outage_s": 3.0,
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
        spec = synthetic("boxed", workers=workers)
        response = client.post("/studies", json=spec)
        assert response.status_code == 422, response.text
        (error,) = response.json()["errors"]
        assert error["field"] == field
        assert reason in error["message"]
        assert client.get("/studies/boxed").status_code == 404


def test_docker_workers_need_docker_hosts(client: TestClient) -> None:
    spec = synthetic("boxed", launcher="docker")
    response = client.post("/studies", json=spec)
    assert response.status_code == 422
    (error,) = response.json()["errors"]
    assert error["field"] == "workers.launcher"
    assert "HELIOS_HPO_DOCKER_HOSTS" in error["message"]


def test_an_unreachable_docker_host_fails_the_study_once_the_outage_lasts(
    docker_settings: Settings,
) -> None:
    spec = synthetic(
        "no-engine",
        max_restarts=1,
        launcher="docker",
        gpus_per_worker=1,
        image="my-team/worker:3",
    )
    with TestClient(create_app(docker_settings)) as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for(
            lambda: (s := client.get("/studies/no-engine").json())["status"] == "failed" and s,
            30,
            "the study to fail",
        )
        reason = study["status_reason"]
        assert "their host stayed unreachable (launcher_outage_s=3)" in reason
        assert "could not start a docker worker on gone" in reason
        workers = client.get("/studies/no-engine/workers").json()
        # Not failed at the second try, as a crash loop would be: once the outage lasted.
        lasted = int(reason.split("could not be started for ")[1].split(" s")[0])
        assert lasted >= 3
        assert len(workers) >= 2
        assert {(w["state"], w["exit_code"]) for w in workers} == {("failed", UNREACHABLE)}
        assert all(len(w["gpus"]) == 1 for w in workers)
        logs = client.get(f"/workers/{workers[0]['id']}/logs").json()
        assert "could not start a docker worker on gone" in logs["lines"][0]


@pytest.mark.docker
def test_a_container_removed_while_its_log_is_read_reads_as_gone(
    settings: Settings, tmp_path: Path, docker_engine: Dockerd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The route looked the container up, then read its log: removed in between (its
    # worker ended), the read raised inside the response.
    client = docker_engine.client()
    host = DockerHost(name="a", url=docker_engine.url, gpus=[])
    launcher = docker_launcher(
        settings.model_copy(update={"docker": DockerSettings(hosts=[host])}), lambda _: client
    )
    assert launcher is not None
    container = client.containers.run(
        WORKER_IMAGE,
        entrypoint=["sleep", "60"],
        labels={f"{LABEL}.instance": launcher.instance},
        network_mode="none",
        detach=True,
    )
    ref = f"a/{container.id}"
    try:
        assert launcher.log_lines(ref) == []
        from docker.models.containers import Container, ContainerCollection

        # Being removed (its log already kept), the engine answers a log read with 409.
        def being_removed(self: Container, **kwargs: Any) -> bytes:
            response = requests.Response()
            response.status_code = 409
            raise docker.errors.APIError(
                "can not get logs from container which is dead or marked for removal",
                response=response,
            )

        monkeypatch.setattr(Container, "logs", being_removed)
        assert launcher.log_lines(ref) is None  # its log is read from the kept file
        monkeypatch.undo()

        looked_up = ContainerCollection.get

        def removed_once_looked_up(self: ContainerCollection, container_id: str) -> Any:
            found = looked_up(self, container_id)
            found.remove(force=True)
            return found

        monkeypatch.setattr(ContainerCollection, "get", removed_once_looked_up)
        assert launcher.log_lines(ref) is None  # gone: its log is read from the kept file
        launcher.stop(ref)  # nothing to stop: no error
        monkeypatch.undo()
        assert launcher.exit_code(ref) == LOST
        launcher.forget(ref, tmp_path / "kept.log")  # nothing to keep: no error
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


@pytest.mark.docker
def test_a_container_removed_while_listed_is_not_found_rather_than_an_error(
    settings: Settings, docker_engine: Dockerd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Listing inspects each container: one removed in between (its worker ended and the
    # supervisor removed it) made find() raise inside the supervisor's tick, and
    # remove_strays() report its host unreachable.
    client = docker_engine.client()
    host = DockerHost(name="a", url=docker_engine.url, gpus=[])
    launcher = docker_launcher(
        settings.model_copy(update={"docker": DockerSettings(hosts=[host])}), lambda _: client
    )
    assert launcher is not None
    from docker.models.containers import ContainerCollection

    looked_up = ContainerCollection.get

    def removed_first(self: ContainerCollection, container_id: str) -> Any:
        client.api.remove_container(container_id, force=True)
        return looked_up(self, container_id)

    monkeypatch.setattr(ContainerCollection, "get", removed_first)
    for listing in (lambda: launcher.find("any", 5), lambda: launcher.remove_strays(set())):
        container = client.api.create_container(
            WORKER_IMAGE,
            entrypoint=["sleep", "60"],
            labels={f"{LABEL}.instance": launcher.instance, f"{LABEL}.worker-id": "5"},
        )
        try:
            assert listing() in (None, True)  # not found; the host was reached
        finally:
            with contextlib.suppress(Exception):
                client.api.remove_container(container["Id"], force=True)
