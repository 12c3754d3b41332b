"""A small run of bench/study_creation.py so it cannot rot (no speed-up asserted)."""

from __future__ import annotations

import re

from tests.bench_tests.support import run_bench


def test_study_creation_small_run_prints_both_paths_and_the_ratio() -> None:
    lines = run_bench("study_creation.py", "--trials", "20")
    assert lines[0] == "20 trials on SQLite"
    for kind, line in zip(("warm start", "enqueue_trials"), lines[1:], strict=True):
        assert re.fullmatch(rf"{kind} +service +[\d.]+ s +optuna +[\d.]+ s +ratio [\d.]+", line), (
            line
        )
