"""Fixtures of the service tests: settings on a migrated throwaway database, an API client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.settings import Settings
from service.storage.migrations import upgrade


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings on a migrated throwaway database, with fast supervision."""
    upgrade(database_url)
    return Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        supervisor_interval_s=0.2,
        heartbeat_interval_s=1,
        heartbeat_grace_s=4,
        worker_stop_timeout_s=5,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The API without a supervisor: nothing trains."""
    with TestClient(create_app(settings, supervise=False)) as test_client:
        yield test_client
