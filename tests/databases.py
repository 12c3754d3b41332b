"""Throwaway databases for tests: a temp SQLite file, or a fresh PostgreSQL database.

PostgreSQL tests run when HELIOS_HPO_TEST_POSTGRES_URL names a server
(``make test`` sets it to the local one); each test gets its own database,
dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from service.storage.db import normalize_url
from tests.support import unavailable

POSTGRES_URL = os.environ.get("HELIOS_HPO_TEST_POSTGRES_URL")

# For end-to-end tests whose subject does not touch the database differently on
# PostgreSQL (signals, logs, the CLI, a sampler's choices): the same service paths run
# on PostgreSQL in the other end-to-end tests, so these run on SQLite alone.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _postgres_database() -> Iterator[str]:
    if not POSTGRES_URL:
        unavailable("HELIOS_HPO_TEST_POSTGRES_URL names no PostgreSQL server")
    admin_url = normalize_url(POSTGRES_URL)
    name = f"helios_hpo_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        where = admin_url.render_as_string(hide_password=True)
        unavailable(f"no PostgreSQL server answers at {where}: {str(exc.orig).strip()[:200]}")
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A throwaway database of each kind, empty."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hpo.db'}"
    else:
        yield from _postgres_database()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL database, empty (skips without a server)."""
    yield from _postgres_database()
