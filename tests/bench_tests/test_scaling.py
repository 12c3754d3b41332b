"""Tiny runs of bench/ddp_scaling.py and bench/supervisor_tick.py so they cannot rot
(no timing asserted)."""

from __future__ import annotations

import pytest

from tests.bench_tests.support import run_bench


def _rows(lines: list[str]) -> list[list[str]]:
    """The table's rows: the lines that start with a number."""
    return [line.split() for line in lines if line.strip()[:1].isdigit()]


@pytest.mark.slow
def test_ddp_scaling_small_run_prints_both_rows() -> None:
    rows = _rows(run_bench("ddp_scaling.py", "--small"))
    assert [int(r[0]) for r in rows] == [1, 2]
    assert float(rows[0][-1]) == 1.0  # the baseline
    assert all(float(r[1]) > 0 for r in rows)  # samples/s


def test_supervisor_tick_small_run_prints_each_study_count() -> None:
    rows = _rows(run_bench("supervisor_tick.py", "--studies", "1", "3", "--ticks", "2"))
    assert [int(r[0]) for r in rows] == [1, 3]
    assert all(float(r[1]) > 0 for r in rows)  # median ms
