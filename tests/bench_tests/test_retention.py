"""A tiny run of bench/retention.py so it cannot rot (its figures go in docs/benchmarks.md)."""

from __future__ import annotations

import pytest

from tests.bench_tests.support import run_bench


@pytest.mark.slow
def test_retention_small_run_prints_both_runs_the_ratio_and_the_bound() -> None:
    lines = run_bench(
        "retention.py", "--trials", "6", "--state-mb", "0.1", "--epochs", "2",
        "--workers", "1", "--keep", "2",
    )  # fmt: skip
    rows = {
        line.split()[0]: line.split()[1:]
        for line in lines
        if line.split()[:1] in (["without"], ["with"])
    }
    assert set(rows) == {"without", "with"}
    # Without retention every trial keeps a checkpoint; with it, none is left.
    assert float(rows["without"][0]) > 0
    assert float(rows["with"][0]) == 0
    assert any(line.startswith("ratio (with/without) at the end: 0.") for line in lines)
    assert any(line.endswith("peak within it") for line in lines)
