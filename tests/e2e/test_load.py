"""200 mixed reads/s for 30 s while 4 workers train: no errors, p99 < 100 ms, no trial
lost or left RUNNING (bench/load.py does the work; bounded in count and time).

SQLite, the default database; bench/load.py measures PostgreSQL too (docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.load import run_load
from tests.e2e.harness import Service

pytestmark = pytest.mark.slow


RATE, SECONDS = 200, 30


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hpo.db'}"


@pytest.fixture
def service_env() -> dict[str, str]:
    return {
        "HELIOS_HPO_HEARTBEAT_INTERVAL_S": "2",
        "HELIOS_HPO_HEARTBEAT_GRACE_S": "20",
        "OMP_NUM_THREADS": "1",  # the workers' torch shares 2 cores with the service
    }


def test_mixed_reads_at_a_fixed_rate_while_workers_train(service: Service) -> None:
    result, _ = run_load(service.url, rate=RATE, seconds=SECONDS)
    assert result.requests == RATE * SECONDS
    assert result.errors == []
    assert len(result.latencies_ms) == RATE * SECONDS
    assert result.percentile(0.99) < 100, f"p99 {result.percentile(0.99):.1f} ms"
    counts = result.counts
    assert counts["RUNNING"] == 0
    assert counts["FAIL"] == 0
    assert counts["WAITING"] == 0
    assert counts["COMPLETE"] + counts["PRUNED"] == result.trials
    assert result.trials > 30  # the workers trained throughout (trials of up to 3 s)
