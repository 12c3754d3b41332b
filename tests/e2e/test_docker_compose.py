"""docker/compose.yaml brought up for real with Compose v1 (Debian's docker-compose).

This machine's engine has no bridge network and pulls no image, so
tests/compose/override.yaml puts every service on the host's network (service names
resolve through extra_hosts; PostgreSQL listens on 127.0.0.2 beside the machine's own
server) and names locally built images. Compose v1 cannot drop a list in an override,
so the test drops ``ports`` from the merged file: on the host's network a service binds
its port itself. The first test checks that nothing else differs from the users' file.
The worker's GPU reservation goes to the engine unchanged; its NVIDIA driver hands it to
a stand-in hook (tests/engine_bin/), as on a GPU host without the devices.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.dockerd import (
    DOCKER_BUILD_TIMEOUT,
    DOCKER_GROUP,
    Dockerd,
    build_compose_images,
    engine_tools,
)
from tests.e2e.harness import wait_for
from tests.specs import synthetic

pytestmark = [pytest.mark.docker, pytest.mark.slow, DOCKER_GROUP, DOCKER_BUILD_TIMEOUT]

REPO = Path(__file__).resolve().parents[2]
USERS_FILE = REPO / "docker" / "compose.yaml"
OVERRIDE = REPO / "tests" / "compose" / "override.yaml"
PROJECT = "helios-hpo-test"
STUDY = "composed"
# What the stack binds on the host's network: PgBouncer, the API, the dashboard, PostgreSQL.
ANY = "0.0.0.0"  # noqa: S104 (probed, to find the stack's ports free)
PORTS = [(ANY, 6432), (ANY, 8000), (ANY, 8080), ("127.0.0.2", 5432)]
HEALTHCHECKED = ("postgres", "pgbouncer", "service", "dashboard")


def _compose_env(base: dict[str, str], token: str) -> dict[str, str]:
    return {
        **base,
        "POSTGRES_PASSWORD": secrets.token_hex(12),
        "HELIOS_HPO_API_TOKENS": f"write:{token}",
        "HELIOS_HPO_STUDY": STUDY,
    }


def _config(compose: str, env: dict[str, str], *files: Path) -> dict[str, Any]:
    """The configuration Compose resolves from ``files`` (merged, interpolated)."""
    args = [arg for path in files for arg in ("-f", str(path))]
    done = subprocess.run(
        [compose, "-p", PROJECT, *args, "config"],
        env=env, cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = yaml.safe_load(done.stdout)
    return config


def test_the_override_changes_only_network_mode_images_and_host_names() -> None:
    compose = engine_tools()["docker-compose"]
    env = _compose_env({"PATH": "/usr/bin:/bin"}, "x" * 32)
    users = _config(compose, env, USERS_FILE)
    merged = _config(compose, env, USERS_FILE, OVERRIDE)
    assert set(merged["services"]) == set(users["services"])
    assert merged["volumes"] == users["volumes"]
    for name, service in users["services"].items():
        changed = {
            key
            for key in service.keys() | merged["services"][name].keys()
            if service.get(key) != merged["services"][name].get(key)
        }
        assert changed == {"image", "network_mode", "extra_hosts"}, name
        assert merged["services"][name]["network_mode"] == "host"
    # The GPU reservation is the users' own, unchanged.
    assert merged["services"]["worker"]["deploy"] == users["services"]["worker"]["deploy"]


def _port_taken(host: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


class Stack:
    def __init__(self, compose: str, file: Path, env: dict[str, str], token: str) -> None:
        self.compose, self.file, self.env, self.token = compose, file, env, token

    def run(self, *args: str, timeout_s: float = 300) -> str:
        done = subprocess.run(
            [self.compose, "-p", PROJECT, "-f", str(self.file), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout_s, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"docker-compose {' '.join(args)}:\n{done.stderr[-3000:]}"
        return done.stdout

    def containers(self, engine: Dockerd, service: str) -> list[Any]:
        found: list[Any] = engine.client().containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={PROJECT}",
                    f"com.docker.compose.service={service}",
                ]
            },
            ignore_removed=True,
        )
        return found


@pytest.fixture
def stack(docker_engine: Dockerd, tmp_path: Path) -> Iterator[Stack]:
    """The users' compose stack with the override, ports dropped, up until healthy."""
    taken = [f"{host}:{port}" for host, port in PORTS if _port_taken(host, port)]
    if taken:
        pytest.fail(f"the compose stack binds {', '.join(taken)} on this host: free them")
    compose = engine_tools()["docker-compose"]
    build_compose_images(docker_engine)
    token = secrets.token_hex(16)
    env = _compose_env(docker_engine.env, token)
    config = _config(compose, env, USERS_FILE, OVERRIDE)
    for service in config["services"].values():
        service.pop("ports", None)  # the host's network: each binds its own port
    file = tmp_path / "compose.yaml"
    file.write_text(yaml.safe_dump(config))
    stack = Stack(compose, file, env, token)
    try:
        stack.run("up", "-d")
        yield stack
    finally:
        with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
            (tmp_path / "stack.log").write_text(stack.run("--profile", "workers", "logs"))
        stack.run("--profile", "workers", "down", "-v", "--remove-orphans", timeout_s=120)


def test_the_compose_stack_trains_a_study_with_scaled_workers(
    docker_engine: Dockerd, stack: Stack
) -> None:
    def health() -> dict[str, str] | None:
        states = {
            service: container.attrs["State"].get("Health", {}).get("Status", "")
            for service in HEALTHCHECKED
            for container in stack.containers(docker_engine, service)
        }
        settled = all(state in ("healthy", "unhealthy") for state in states.values())
        return states if len(states) == len(HEALTHCHECKED) and settled else None

    states = wait_for(health, 120, "every service's healthcheck to settle")
    assert states == dict.fromkeys(HEALTHCHECKED, "healthy")

    auth = {"Authorization": f"Bearer {stack.token}"}
    api = httpx.Client(base_url="http://127.0.0.1:8000", timeout=30)
    spec = synthetic(STUDY, n_trials=20, epochs=30, sleep_s=0.1, workers=1)
    assert api.post("/studies", json=spec).status_code == 401  # no token: refused
    assert api.post("/studies", json=spec, headers=auth).status_code == 201
    stack.run("--profile", "workers", "up", "-d", "--scale", "worker=2")

    def ended() -> dict[str, Any] | None:
        study: dict[str, Any] = api.get(f"/studies/{STUDY}", headers=auth).json()
        return study if study["status"] != "running" else None

    study = wait_for(ended, 240, "the study to end")

    def exited() -> list[Any] | None:
        found = stack.containers(docker_engine, "worker")
        return found if len(found) == 2 and all(c.status == "exited" for c in found) else None

    workers = wait_for(exited, 120, "both compose workers to exit")
    logs = [c.logs().decode(errors="replace") for c in workers]
    dashboard = httpx.get("http://127.0.0.1:8080/api/studies", headers=auth, timeout=30)
    refused = httpx.get("http://127.0.0.1:8080/api/studies", timeout=30)
    gpus = docker_engine.gpus_given()

    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 20
    for container, log in zip(workers, logs, strict=True):
        container.reload()
        assert container.attrs["State"]["ExitCode"] == 0, log[-2000:]
        assert "trial complete" in log or "trial pruned" in log, log[-2000:]
        assert "budget of 20 trials spent" in log
        # Compose's `count: 1` reached the engine's NVIDIA driver; Docker gives each
        # container the first GPU without looking at the others (README says so).
        assert gpus.get(container.id) == "0", json.dumps(gpus)
    names = [s["study_name"] for s in dashboard.json()["study_summaries"]]
    assert dashboard.status_code == 200
    assert names == [STUDY]
    assert refused.status_code == 401
