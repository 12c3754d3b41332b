"""A small run of bench/study_summary.py so it cannot rot (no timing asserted)."""

from __future__ import annotations

import os

import optuna
import pytest

from bench.study_summary import add_trials
from service.storage.db import optuna_storage
from tests.bench_tests.support import run_bench


def test_trials_added_in_bulk_read_back_through_optuna_as_it_writes_them(
    database_url: str,
) -> None:
    """The bench writes Optuna's rows itself (Optuna's own path takes minutes at 10,000
    trials on PostgreSQL); Optuna reads them back and carries on after them."""
    storage = optuna_storage(database_url)
    study = optuna.create_study(study_name="bulk", storage=storage)
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=100.0))
    add_trials(database_url, "bulk", 30, 3)
    trials = optuna.load_study(study_name="bulk", storage=storage).trials
    assert [t.number for t in trials] == list(range(31))
    added = trials[1:]
    assert {t.state for t in added} == {
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    }
    for t in added:
        x, y = t.params["x"], t.params["y"]
        assert -10 <= x <= 10
        assert isinstance(y, int)
        loss = (x - 2) ** 2 + 0.5 * (y - 3) ** 2
        assert t.intermediate_values == pytest.approx({s: loss + 1 / (1 + s) for s in range(3)})
        assert t.value == (None if t.state == optuna.trial.TrialState.PRUNED else loss)
    study.tell(study.ask(), 0.0)  # Optuna numbers the next trial after them
    assert study.best_trial.number == 31


@pytest.mark.slow
def test_study_summary_small_run_prints_both_reads_and_the_baseline() -> None:
    lines = run_bench(
        "study_summary.py",
        "--trials",
        "120",
        "--steps",
        "5",
        "--requests",
        "5",
        "--baseline-runs",
        "1",
        "--writers",
        "2",
        "--rate",
        "20",
        "--seconds",
        "3",
    )
    assert lines[0] == "database=sqlite trials=120 intermediate values/trial=5"
    rows = {line[:42].strip(): line[42:].split() for line in lines[2:5]}
    assert set(rows) == {
        "optuna study.trials + counts + best",
        "GET /studies/{name}",
        "GET /studies/{name}/trials?limit=100",
    }
    for p50, p99, ratio in rows.values():
        assert 0 < float(p50) <= float(p99)
        assert float(ratio) > 0
    assert lines[5].startswith("under 2 writing workers: 20 reads/s for 3 s, 60 requests, 0 errors")
    written = int(lines[5].split(", ")[-1].split()[0])
    assert written > 0  # the workers wrote while the reads ran
    loaded = {line[:42].strip(): line[42:].split() for line in lines[6:8]}
    assert set(loaded) == {
        "GET /studies/{name} under writers",
        "GET /studies/{name}/trials under writers",
    }
    for p50, p99 in loaded.values():
        assert 0 < float(p50) <= float(p99)
    cpu = lines[8].split(": ", 1)[1].split(", ")
    assert [group.rsplit(" ", 1)[0] for group in cpu] == [
        "service",
        "workers",
        "PostgreSQL",
        "load generator",
        "other",
    ]
    assert float(cpu[0].rsplit(" ", 1)[1]) > 0  # the service served the reads


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(os.geteuid() != 0, reason="renicing PostgreSQL's processes needs root")
def test_a_second_round_with_the_writers_backends_reniced(postgres_url: str) -> None:
    lines = run_bench(
        "study_summary.py",
        "--database-url",
        postgres_url,
        "--trials",
        "60",
        "--steps",
        "3",
        "--requests",
        "3",
        "--baseline-runs",
        "1",
        "--writers",
        "2",
        "--rate",
        "10",
        "--seconds",
        "3",
        "--writer-backends-nice",
        "5",
    )
    rounds = [line for line in lines if line.startswith("under 2 writing workers")]
    assert len(rounds) == 2, lines
    assert "their server processes at nice 5" in rounds[1]
    for line in rounds:  # each round's writers started (the bench waits for a trial each)
        assert ", 0 errors, " in line
