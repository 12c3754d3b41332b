"""A small run of bench/peers.py (helios-hpo, Ray Tune, raw Optuna) so it cannot rot; no
timing asserted."""

from __future__ import annotations

import pytest

from tests.bench_tests.support import run_bench


@pytest.mark.slow
def test_peers_small_run_prints_a_row_per_system() -> None:
    lines = run_bench(
        "peers.py", "--concurrency", "2", "--trials", "4", "--epochs", "2", "--seed", "0", "1"
    )
    rows = [line.split(" | ") for line in lines if line.startswith("| 2 |")]
    assert sorted(row[1] for row in rows) == ["helios-hpo", "raw-optuna", "ray-tune"]
    for row in rows:
        wall, trials, epochs, best = (row[i].split()[0] for i in (2, 4, 6, 7))
        assert float(wall) > 0
        # Means over the seeds. Raw Optuna's processes may finish one more than asked.
        assert float(trials) >= 4
        assert float(trials) <= float(epochs) <= 2 * float(trials)
        assert 0.5 < float(best) <= 1.0
    per_seed = [line for line in lines if line.startswith("2 ")]
    assert sorted(line.split(":")[0] for line in per_seed) == [
        "2 helios-hpo",
        "2 raw-optuna",
        "2 ray-tune",
    ]
    for line in per_seed:  # two seeds each
        assert len(line.split("epochs ")[1].split(";")[0].split()) == 2
    held = {line.split(":")[0].strip(): line for line in lines if line.startswith("  2 ")}
    assert sorted(held) == ["2 helios-hpo", "2 raw-optuna", "2 ray-tune"]
    assert "worker 2 x " in held["2 helios-hpo"]  # the service's two workers at the peak
    assert "service 1 x " in held["2 helios-hpo"]
