"""The database layer: SQLite pragmas, URLs, and the CLI's db upgrade."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from service.storage.db import (
    SERVICE_POOL,
    WORKER_POOL,
    Pool,
    make_engine,
    normalize_url,
    optuna_storage,
    redact_url,
)


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_postgres_urls_use_psycopg_3_and_passwords_stay_hidden() -> None:
    url = normalize_url("postgresql://hpo:s3cret@db.example:5432/hpo")
    assert url.drivername == "postgresql+psycopg"
    assert normalize_url("postgresql+psycopg://u@h/d").drivername == "postgresql+psycopg"
    assert "s3cret" not in redact_url("postgresql://hpo:s3cret@db.example/hpo")


def test_cli_db_upgrade_creates_the_tables(database_url: str) -> None:
    env = {**os.environ, "HELIOS_HPO_DATABASE_URL": database_url}
    proc = subprocess.run(
        [sys.executable, "-m", "service.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "is at revision head" in proc.stdout
    engine = make_engine(database_url)
    try:
        assert {"hpo_studies", "hpo_workers", "hpo_alembic_version"} <= set(
            inspect(engine).get_table_names()
        )
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_connections_name_the_service_or_the_worker(postgres_url: str) -> None:
    # pg_stat_activity tells an operator which connections are whose.
    def name(url: str, pool: Pool) -> str:
        engine = make_engine(url, pool)
        try:
            with engine.connect() as conn:
                return str(conn.scalar(text("SELECT current_setting('application_name')")))
        finally:
            engine.dispose()

    assert name(postgres_url, SERVICE_POOL) == "helios-hpo service"
    assert name(postgres_url, WORKER_POOL) == "helios-hpo worker"
    storage = optuna_storage(postgres_url, pool=WORKER_POOL)
    with storage.engine.connect() as conn:
        assert conn.scalar(text("SELECT current_setting('application_name')")) == (
            "helios-hpo worker"
        )
    storage.engine.dispose()
    assert name(f"{postgres_url}?application_name=etl", WORKER_POOL) == "etl"  # the URL's wins


def test_an_optuna_schema_of_another_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    optuna_storage(url).engine.dispose()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'v3.0.0.a'"))
    engine.dispose()
    with pytest.raises(RuntimeError, match="schema is at v3.0.0.a.*optuna storage upgrade"):
        optuna_storage(url)
