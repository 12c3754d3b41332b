"""A real service for end-to-end tests: `helios-hpo serve` on a free port, real workers,
real HTTP; and what the tests read of it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from service.storage.db import make_engine
from service.storage.rows import WorkerRow
from tests.support import free_port, wait_for, wait_until_ended

__all__ = [
    "Service",
    "kill_workers",
    "optuna_trials",
    "start_service",
    "stop_service",
    "study_summary",
    "wait_for",
    "wait_for_status",
]


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


def kill_workers(database_url: str) -> None:
    """SIGKILL every worker the database knows of (what a test leaves running)."""
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
    port: int | None = None,
    cwd: Path | None = None,
) -> Service:
    """Start `helios-hpo serve` on ``port`` (default: a free one) and wait until it
    answers /healthz. In ``cwd`` it runs as a user runs it there: the console script."""
    port = port or free_port()
    command = [sys.executable, "-m", "service.cli"]
    if cwd is not None:
        command = [str(Path(sys.executable).parent / "helios-hpo")]
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
            [*command, "serve", "--port", str(port), *extra_args],
            env=env,
            cwd=cwd,
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


def wait_for_status(
    client: httpx.Client, name: str, timeout_s: float, svc: Service
) -> dict[str, Any]:
    """Poll the study until it leaves ``running``; its summary (the service's and workers'
    logs in the error when it does not)."""

    return wait_until_ended(client, name, timeout_s, explain=lambda: service_logs(svc))


LIVE_WORKER_STATES = ("starting", "pending", "running")


def workers_once_ended(
    client: httpx.Client, name: str, timeout_s: float, svc: Service
) -> list[dict[str, Any]]:
    """The study's workers once none is live any more. A study ends when its last trial
    is told; its workers exit after that, and a loaded machine takes seconds to reap them."""
    workers: list[dict[str, Any]] = []

    def ended() -> bool:
        workers[:] = client.get(f"/studies/{name}/workers").json()
        return all(w["state"] not in LIVE_WORKER_STATES for w in workers)

    try:
        wait_for(ended, timeout_s, f"every worker of {name} to end")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {workers}\n{service_logs(svc)}") from None
    return workers


def service_logs(svc: Service) -> str:
    """The tails of the service's log and of its workers' logs."""
    workers = "\n".join(p.read_text()[-3000:] for p in svc.data_dir.rglob("worker-*.log"))
    return f"service log:\n{svc.log()[-3000:]}\n{workers}"


def study_summary(client: httpx.Client, name: str) -> dict[str, Any]:
    """GET /studies/{name}."""
    study: dict[str, Any] = client.get(f"/studies/{name}").json()
    return study


def latest_checkpoint_epoch(folder: Path) -> int:
    """The epoch of the newest checkpoint in ``folder`` (-1 when there is none)."""
    epochs = [int(p.name.split("_epoch")[1][:5]) for p in folder.glob("*_epoch*_iter*.pth")]
    return max(epochs, default=-1)


def optuna_trials(svc: Service, name: str) -> list[Any]:
    """The study's trials as Optuna itself loads them from the same database."""
    import optuna

    from service.storage.db import optuna_storage

    return list(optuna.load_study(study_name=name, storage=optuna_storage(svc.database_url)).trials)
