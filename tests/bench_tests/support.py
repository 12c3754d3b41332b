"""Running a benchmark script small, as CI does, so it cannot rot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_bench(script: str, *args: str, timeout_s: float = 1200) -> list[str]:
    """The output lines of ``python bench/SCRIPT ARGS``, which must succeed.

    ``timeout_s`` guards against a hang; a loaded machine runs a benchmark several times
    slower than a quiet one (bench/peers.py: 12 minutes beside two busy loops).
    """
    proc = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [sys.executable, str(REPO / "bench" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout.splitlines()
