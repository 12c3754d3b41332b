"""Through PgBouncer in transaction mode: a study runs to the end on few server connections.

The service and its workers reach PostgreSQL only through PgBouncer (the
compose stack's way past PostgreSQL's connection limit); the study lock is a
transaction-level advisory lock and psycopg's prepared statements are off
(``?prepare_threshold=none``), as transaction pooling needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.storage.db import normalize_url
from service.storage.rows import LIVE_STATES as LIVE
from tests.e2e.harness import Service, kill_workers, service_logs, start_service, stop_service
from tests.specs import synthetic
from tests.support import debian_tool, free_port, wait_for, wait_until_ended

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

POOL_SIZE = 4  # server connections PgBouncer opens to the database
WORKERS = 8


@pytest.fixture(scope="session")
def pgbouncer_bin() -> str:
    """Debian's PgBouncer, installed here when missing."""
    return debian_tool("pgbouncer", "pgbouncer")


@pytest.fixture
def pgbouncer(pgbouncer_bin: str, database_url: str) -> Iterator[str]:
    """PgBouncer in transaction mode in front of the test's database; yields its URL."""
    server = make_url(database_url)
    root = Path(tempfile.mkdtemp(prefix="hpo-pgbouncer-"))
    port = free_port()
    (root / "users.txt").write_text(f'"{server.username}" ""\n')
    (root / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{server.database} = host={server.host} port={server.port or 5432} "
        f"dbname={server.database}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {root / 'users.txt'}\n"
        f"pool_mode = transaction\ndefault_pool_size = {POOL_SIZE}\n"
        "max_client_conn = 500\nreserve_pool_size = 0\n"
        f"logfile = {root / 'pgbouncer.log'}\n"
    )
    user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if user:
        shutil.chown(root, "postgres")
        for path in root.iterdir():
            shutil.chown(path, "postgres")
    proc = subprocess.Popen([*user, pgbouncer_bin, str(root / "pgbouncer.ini")])  # noqa: S603
    url = server.set(port=port).update_query_dict({"prepare_threshold": "none"})
    try:
        wait_for(lambda: _answers(url.render_as_string(hide_password=False)), 30, "PgBouncer")
        yield url.render_as_string(hide_password=False)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def _answers(url: str) -> bool:
    from service.storage.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        engine.dispose()


@pytest.fixture
def database_url(postgres_url: str) -> str:
    return postgres_url


def test_a_study_through_pgbouncer_finishes_on_its_pool_of_server_connections(
    database_url: str, pgbouncer: str, tmp_path: Path
) -> None:
    server = normalize_url(database_url)
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        with admin.connect() as conn:
            while not done.wait(0.05):
                count = conn.scalar(
                    text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db"),
                    {"db": server.database},
                )
                peak = max(peak, int(count or 0))

    def explain(svc: Service) -> str:
        """What each server connection did, and the service's and workers' logs."""
        with admin.connect() as conn:
            sessions = conn.execute(
                text(
                    "SELECT pid, state, now() - xact_start, wait_event, left(query, 160)"
                    " FROM pg_stat_activity WHERE datname = :db"
                ),
                {"db": server.database},
            ).all()
        lines = "\n".join(" | ".join(map(str, row)) for row in sessions)
        return f"server connections:\n{lines}\n{service_logs(svc)}"

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    svc = start_service(pgbouncer, tmp_path / "data", tmp_path / "service.log", {})
    try:
        spec = synthetic(
            "bounced",
            n_trials=40,
            max_failed_trials=0,
            sleep_s=0.02,
            workers=WORKERS,
        )
        with httpx.Client(base_url=svc.url, timeout=30) as client:
            assert client.post("/studies", json=spec).status_code == 201

            study = wait_until_ended(client, "bounced", 300, explain=lambda: explain(svc))

            def all_ended() -> list[dict[str, object]] | None:
                workers: list[dict[str, object]] = client.get("/studies/bounced/workers").json()
                return workers if all(w["state"] not in LIVE for w in workers) else None

            workers = wait_for(all_ended, 60, "the workers to exit")
    finally:
        done.set()
        watcher.join()
        stop_service(svc)
        kill_workers(database_url)
        admin.dispose()
    assert study["status"] == "finished", study["status_reason"]
    counts = study["counts"]
    assert counts["COMPLETE"] + counts["PRUNED"] == 40, counts
    assert counts["FAIL"] == counts["RUNNING"] == 0, counts
    assert len(workers) == WORKERS
    assert all(w["state"] == "exited" for w in workers), workers
    # The service and 8 workers would hold ~20 connections directly; PgBouncer opens 4.
    assert 0 < peak <= POOL_SIZE, f"{peak} server connections"


def test_opening_optuna_storage_needs_one_server_connection_at_a_time(
    database_url: str, pgbouncer: str
) -> None:
    # Optuna's schema check read on a second connection while its first held a
    # transaction: workers starting together held every server connection that way,
    # each waiting for one more, until PgBouncer gave up (CI saw the service hang 30 s).
    from service.storage.db import Pool, make_engine, optuna_storage

    optuna_storage(database_url).engine.dispose()  # Optuna's tables, made directly
    engines = [make_engine(pgbouncer, Pool(size=1, overflow=0)) for _ in range(POOL_SIZE - 1)]
    holders = [engine.connect() for engine in engines]
    for conn in holders:  # every server connection but one, held in an open transaction
        conn.execute(text("SELECT 1"))
    opened: list[optuna.storages.RDBStorage] = []
    thread = threading.Thread(target=lambda: opened.append(optuna_storage(pgbouncer)), daemon=True)
    thread.start()
    thread.join(timeout=20)
    in_time = bool(opened)
    for conn, engine in zip(holders, engines, strict=True):
        conn.rollback()
        conn.close()
        engine.dispose()
    thread.join(timeout=60)
    if opened:
        opened[0].engine.dispose()
    assert in_time, "opening the storage waited for a second server connection"
