"""Fixtures of the end-to-end tests: a real service per test (see tests/e2e/harness.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Service, kill_workers, start_service, stop_service


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
        kill_workers(database_url)
