"""A small run of bench/pruning.py so it cannot rot (no timing asserted)."""

from __future__ import annotations

import pytest

from tests.bench_tests.support import run_bench


@pytest.mark.slow
def test_pruning_small_run_compares_each_pruner_with_the_baseline() -> None:
    lines = run_bench("pruning.py", "--seeds", "1", "--trials", "8", "--epochs", "3")
    assert lines[0].startswith("task=digits seeds=1 trials/seed=8 epochs/trial=3")
    rows = {line[:26].strip(): line[26:].split() for line in lines[2:]}
    pruners = (
        "MedianPruner",
        "MedianPruner (3 startup)",
        "SuccessiveHalvingPruner",
        "HyperbandPruner",
    )
    assert set(rows) == {"NopPruner (baseline)", *pruners}
    epochs, ratio, pruned, best, diff, _ = rows["NopPruner (baseline)"]
    # The baseline trains every trial to the end and prunes none.
    assert (int(epochs), float(ratio), int(pruned), float(diff)) == (8 * 3, 1.0, 0, 0.0)
    assert 10 < float(best) <= 100  # digits: far better than chance
    for name in pruners:
        epochs, ratio, pruned, best, _, _ = rows[name]
        assert int(epochs) == round(float(ratio) * 24)
        # A pruned trial stops early: fewer epochs than trials x epochs.
        assert int(epochs) <= 24 - int(pruned)


@pytest.mark.slow
def test_pruning_runs_the_synthetic_task_too() -> None:
    lines = run_bench("pruning.py", "--task", "synthetic", "--seeds", "1", "--trials", "6",
                      "--epochs", "3")  # fmt: skip
    assert lines[0].startswith("task=synthetic seeds=1 trials/seed=6 epochs/trial=3")
    rows = {line[:26].strip(): line[26:].split() for line in lines[2:]}
    epochs, ratio, pruned, best, diff, _ = rows["NopPruner (baseline)"]
    assert (int(epochs), float(ratio), int(pruned), float(diff)) == (6 * 3, 1.0, 0, 0.0)
    assert float(best) > 0  # the synthetic loss: a bowl whose floor is above 0
