"""A real service: `helios-hpo serve` on a free port, real workers, real HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service.db import make_engine
from service.models import WorkerRow
from tests.databases import database_url
from tests.support import free_port, wait_for

__all__ = ["database_url", "free_port", "wait_for"]


@dataclass
class Service:
    url: str
    database_url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _kill_workers(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            pids = [pid for (pid,) in conn.execute(select(WorkerRow.pid)) if pid]
    except Exception:
        pids = []
    finally:
        engine.dispose()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def start_service(
    database_url: str,
    data_dir: Path,
    log_path: Path,
    extra_env: dict[str, str],
    extra_args: tuple[str, ...] = (),
) -> Service:
    """Start `helios-hpo serve` on a free port and wait until it answers /healthz."""
    port = free_port()
    env = {
        **os.environ,
        "HELIOS_HPO_DATABASE_URL": database_url,
        "HELIOS_HPO_DATA_DIR": str(data_dir),
        "HELIOS_HPO_SUPERVISOR_INTERVAL_S": "0.2",
        "HELIOS_HPO_HEARTBEAT_INTERVAL_S": "1",
        "HELIOS_HPO_HEARTBEAT_GRACE_S": "5",
        "OMP_NUM_THREADS": "1",
        **extra_env,
    }
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port), *extra_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    svc = Service(f"http://127.0.0.1:{port}", database_url, data_dir, log_path, process, env)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"service exited with {process.returncode}:\n{svc.log()}")
        try:
            return httpx.get(f"{svc.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 60, "the service to answer /healthz")
    return svc


def stop_service(svc: Service) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(svc.process.pid, signal.SIGTERM)
    try:
        svc.process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(svc.process.pid, signal.SIGKILL)
        svc.process.wait()


@pytest.fixture
def service_env() -> dict[str, str]:
    """Extra environment for the service; override in a test module."""
    return {}


@pytest.fixture
def service_args() -> tuple[str, ...]:
    """Extra arguments of `helios-hpo serve`; override in a test module."""
    return ()


@pytest.fixture
def service(
    database_url: str,
    tmp_path: Path,
    service_env: dict[str, str],
    service_args: tuple[str, ...],
) -> Iterator[Service]:
    svc = start_service(
        database_url, tmp_path / "data", tmp_path / "service.log", service_env, service_args
    )
    try:
        yield svc
    finally:
        stop_service(svc)
        _kill_workers(database_url)


def wait_for_status(
    client: httpx.Client, name: str, timeout_s: float, svc: Service
) -> dict[str, Any]:
    """Poll the study until it leaves ``running``; its summary."""

    def ended() -> dict[str, Any] | None:
        study: dict[str, Any] = client.get(f"/studies/{name}").json()
        return study if study["status"] != "running" else None

    try:
        result: dict[str, Any] = wait_for(ended, timeout_s, f"study {name} to end", 0.25)
    except AssertionError:
        logs = "\n".join(p.read_text()[-3000:] for p in svc.data_dir.rglob("worker-*.log"))
        raise AssertionError(
            f"study {name} did not end; service log:\n{svc.log()[-3000:]}\n{logs}"
        ) from None
    return result


def study_summary(client: httpx.Client, name: str) -> dict[str, Any]:
    """GET /studies/{name}."""
    study: dict[str, Any] = client.get(f"/studies/{name}").json()
    return study


def optuna_trials(svc: Service, name: str) -> list[Any]:
    """The study's trials as Optuna itself loads them from the same database."""
    import optuna

    from service.db import optuna_storage

    return list(optuna.load_study(study_name=name, storage=optuna_storage(svc.database_url)).trials)
