"""Tiny runs of bench/ddp_scaling.py and bench/supervisor_tick.py so they cannot rot
(no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_ddp_scaling_small_run_prints_both_rows() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ddp_scaling.py"), "--small"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 2]
    assert float(rows[0][-1]) == 1.0  # the baseline
    assert all(float(r[1]) > 0 for r in rows)  # samples/s


def test_supervisor_tick_small_run_prints_each_study_count() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "supervisor_tick.py"),
            *("--studies", "1", "3", "--ticks", "2"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [int(r[0]) for r in rows] == [1, 3]
    assert all(float(r[1]) > 0 for r in rows)  # median ms
