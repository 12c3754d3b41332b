"""A small run of bench/warm_start.py so it cannot rot (no speed-up asserted)."""

from __future__ import annotations

import re

import pytest

from tests.bench_tests.support import run_bench


@pytest.mark.slow
def test_warm_start_small_run_prints_trials_to_the_target_and_the_ratio() -> None:
    lines = run_bench(
        "warm_start.py", "--first", "4", "--seeds", "1", "--budget", "3", "--epochs", "1",

    )  # fmt: skip
    assert lines[0].startswith("task=digits epochs/trial=1 earlier trials=4")
    assert re.search(r"copied=[1-4] budget=3$", lines[0]), lines[0]
    seed, cold, warm = lines[2].split()
    assert seed == "0"
    for needed in (cold, warm):
        assert needed == ">3" or 1 <= int(needed) <= 3
    assert re.fullmatch(
        r"mean trials to reach the earlier best: cold [\d.]+, warm [\d.]+, warm/cold [\d.]+",
        lines[3],
    )
