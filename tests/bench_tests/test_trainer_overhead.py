"""A small CPU run of bench/trainer_overhead.py so it cannot rot (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench_tests.support import run_bench

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_trainer_overhead_small_run_prints_every_ratio() -> None:
    lines = run_bench("trainer_overhead.py", "--small")
    rows = [line.split() for line in lines if line.startswith(("mlp", "cnn"))]
    assert [(r[0], r[1]) for r in rows] == [
        (w, v) for w in ("mlp", "cnn") for v in ("a:", "b:", "c:")
    ]
    for row in rows:
        assert float(row[-1]) > 0  # ratio to (a)
        assert float(row[-2]) > 0  # samples/s


def test_gpu_checks_script_refuses_to_run_without_a_gpu(tmp_path: Path) -> None:
    """bench/gpu_checks.sh is what a GPU host runs; here it must stop at once, saying why."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run the whole check")
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_checks.sh"), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "no CUDA device" in proc.stderr
    assert "torch" in (tmp_path / "out" / "device.txt").read_text()
