"""A server or engine the tests need that is not here: a skip with the reason, or a
failure in CI, where nothing may be silently lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import free_port

REPO = Path(__file__).resolve().parents[1]
NEEDS_POSTGRES = """
pytest_plugins = ["tests.databases"]


def test_needs_postgres(postgres_url):
    pass
"""


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("true", "1 error")])
def test_a_missing_postgres_server_skips_with_its_reason_outside_ci_and_errors_in_ci(
    tmp_path: Path, ci: str, outcome: str
) -> None:
    # make test errored where no PostgreSQL server answered, outside CI too.
    (tmp_path / "test_needs.py").write_text(NEEDS_POSTGRES)
    env = {
        **os.environ,
        "CI": ci,
        "COLUMNS": "400",  # the reasons on one line
        "PYTHONPATH": str(REPO),
        "HELIOS_HPO_TEST_POSTGRES_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres",
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rsfE", str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert outcome in done.stdout, done.stdout[-2000:]
    assert "no PostgreSQL server answers at postgresql+psycopg://postgres@127.0.0.1" in done.stdout
    if ci:
        assert "CI=true: CI installs and starts every engine the tests use" in done.stdout
