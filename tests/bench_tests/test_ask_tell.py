"""A small run of bench/ask_tell.py so it cannot rot (no timing asserted)."""

from __future__ import annotations

import pytest

from tests.bench_tests.support import run_bench


@pytest.mark.slow
def test_ask_tell_small_run_prints_both_per_study_size() -> None:
    lines = run_bench("ask_tell.py", "--sizes", "0,50", "--trials", "3")
    assert lines[0] == "database=sqlite sampler=TPESampler pruner=MedianPruner timed=3"
    rows = [line.split() for line in lines[2:]]
    assert [int(row[0]) for row in rows] == [0, 50]
    for _, raw_ms, worker_ms, ratio in rows:
        assert float(raw_ms) > 0
        assert float(worker_ms) > 0
        assert float(ratio) == pytest.approx(float(worker_ms) / float(raw_ms), abs=0.01)
