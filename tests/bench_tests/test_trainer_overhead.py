"""A small CPU run of bench/trainer_overhead.py so it cannot rot (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_trainer_overhead_small_run_prints_every_ratio() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "trainer_overhead.py"), "--small"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith(("mlp", "cnn"))]
    assert [(r[0], r[1]) for r in rows] == [
        (w, v) for w in ("mlp", "cnn") for v in ("a:", "b:", "c:")
    ]
    for row in rows:
        assert float(row[-1]) > 0  # ratio to (a)
        assert float(row[-2]) > 0  # samples/s
