"""A small run of bench/orchestration.py so it cannot rot (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_orchestration_small_run_prints_rates_and_start_latency() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "orchestration.py"),
            "--workers",
            "1",
            "2",
            "--trials",
            "6",
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [r[0] for r in rows] == ["1", "2"]
    for _, raw_helios, raw_bare, service_rate, ratio, steady, bare_ratio, first in rows:
        assert float(raw_helios) > 0
        assert float(raw_bare) > 0
        assert float(service_rate) > 0
        assert float(ratio) > 0
        assert float(bare_ratio) > 0
        assert float(steady) > 0
        assert float(first) > 0
