"""A PostgreSQL restart mid-study: workers and service reconnect, nothing stays RUNNING."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.storage.migrations import upgrade
from tests.e2e.harness import kill_workers, start_service, stop_service, wait_for, wait_for_status
from tests.specs import synthetic
from tests.support import free_port, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))


def _as_postgres(*cmd: str) -> list[str]:
    # initdb and postgres refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


class Cluster:
    """A throwaway PostgreSQL cluster of this machine's installation."""

    def __init__(self, root: Path) -> None:
        self.bin = Path(BIN[-1])
        self.data = root / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(_as_postgres(*args), check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        )

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-w",
            "-l",
            str(self.data / "server.log"),
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}",
            "start",
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop")


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not BIN:
        unavailable("no PostgreSQL installation under /usr/lib/postgresql")
    if not os.environ.get("HELIOS_HPO_TEST_POSTGRES_URL"):
        unavailable("HELIOS_HPO_TEST_POSTGRES_URL names no PostgreSQL server")
    root = Path(tempfile.mkdtemp(prefix="hpo-pg-"))
    shutil.chown(root, "postgres") if os.geteuid() == 0 else None
    pg = Cluster(root)
    pg.init()
    pg.start()
    try:
        yield pg
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            pg.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_study_survives_a_postgres_restart(cluster: Cluster, tmp_path: Path) -> None:
    upgrade(cluster.url)
    service = start_service(cluster.url, tmp_path / "data", tmp_path / "service.log", {})
    spec = synthetic(
        "outage",
        n_trials=24,
        epochs=10,
        sleep_s=0.05,
        workers=2,
    )
    try:
        with service.client() as client:
            assert client.post("/studies", json=spec).status_code == 201
            wait_for(
                lambda: _finished(client.get("/studies/outage").json()) >= 3,
                60,
                "three finished trials",
            )
            cluster.stop()
            began = time.monotonic()
            # Reads during the outage say so, with when to retry: no 500 "internal error".
            down = wait_for(
                lambda: (r := client.get("/studies/outage")).status_code != 200 and r,
                30,
                "a read to fail",
            )
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == "5"
            assert down.json()["code"] == "database_unavailable"
            assert "database is unreachable" in down.json()["detail"]
            assert client.get("/studies").status_code == 503
            time.sleep(max(0.0, 10 - (time.monotonic() - began)))  # the database is away 10 s
            cluster.start()
            study = wait_for_status(client, "outage", 240, service)
            workers = client.get("/studies/outage/workers").json()
    finally:
        stop_service(service)
        kill_workers(cluster.url)

    assert study["status"] == "finished", study
    counts = study["counts"]
    assert counts["COMPLETE"] + counts["PRUNED"] == 24
    assert counts["RUNNING"] == 0
    assert len(workers) <= 4  # the two workers rode it out, or were replaced once: no crash loop
    assert all(w["state"] != "failed" or w["trials_run"] > 0 for w in workers)


def _finished(study: dict[str, Any]) -> int:
    return int(study["counts"]["COMPLETE"] + study["counts"]["PRUNED"])
