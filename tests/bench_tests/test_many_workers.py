"""A small run of bench/many_workers.py so it cannot rot (no timing asserted)."""

from __future__ import annotations

import ast

import pytest

from tests.bench_tests.support import run_bench


@pytest.mark.slow
@pytest.mark.postgres
def test_many_workers_small_run_counts_connections_of_both_runs(postgres_url: str) -> None:
    lines = run_bench(
        "many_workers.py",
        "--workers",
        "3",
        "--trials",
        "6",
        "--database-url",
        postgres_url,
    )
    assert lines[0] == "database=postgresql workers=3 trials=6"
    rows = {line[:26].strip(): line[26:].split(maxsplit=6) for line in lines[2:4]}
    assert set(rows) == {"raw Optuna (baseline)", "service"}
    for peak, per_worker, trials, failed, deadlocks, _seconds, states in rows.values():
        assert int(peak) >= 3  # each process held a connection at some point
        assert float(per_worker) == pytest.approx(int(peak) / 3, abs=0.01)
        assert int(trials) >= 6
        assert (failed, deadlocks) == ("0", "0")
        assert set(ast.literal_eval(states)) <= {"COMPLETE", "PRUNED"}  # none left RUNNING
