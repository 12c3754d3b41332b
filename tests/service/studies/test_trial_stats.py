"""The summary's counts and best trial, kept incrementally, agree with Optuna after every change."""

from __future__ import annotations

import random
import threading
import time
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from sqlalchemy import event

from service.settings import Settings
from service.storage.db import make_engine, optuna_storage
from service.studies import trial_stats
from tests.specs import ask_synthetic, end_at_random, synthetic

STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")


def _truth(study: optuna.Study) -> tuple[dict[str, int], int | None, float | None]:
    """Counts per state and the best COMPLETE trial, as Optuna sees them."""
    every = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state.name == state for t in every) for state in STATES}
    complete = [t for t in every if t.state == TrialState.COMPLETE]
    if not complete:
        return counts, None, None
    sign = 1 if study.direction == optuna.study.StudyDirection.MINIMIZE else -1
    best = min(complete, key=lambda t: (sign * t.value, t.number))  # type: ignore[operator]
    return counts, best.number, best.value


def _assert_reads_agree(client: TestClient, study: optuna.Study, name: str) -> None:
    counts, best_number, best_value = _truth(study)
    summary = client.get(f"/studies/{name}").json()
    assert summary["counts"] == counts
    assert (summary["best_trial"], summary["best_value"]) == (best_number, best_value)
    best = client.get(f"/studies/{name}/best").json()["trials"]
    assert [t["number"] for t in best] == ([] if best_number is None else [best_number])
    page = client.get(f"/studies/{name}/trials?limit=1").json()
    assert page["total"] == sum(counts.values())
    for state in ("RUNNING", "COMPLETE"):
        page = client.get(f"/studies/{name}/trials?limit=1&state={state}").json()
        assert page["total"] == counts[state]


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_counts_and_best_follow_every_change(
    client: TestClient, settings: Settings, direction: str
) -> None:
    """Trials asked, enqueued, told (complete, pruned, failed, ties) in a random order."""
    objectives = [{"metric": "loss", "direction": direction}]
    spec = synthetic("s", objectives=objectives)
    client.post("/studies", json=spec).raise_for_status()
    study = optuna.load_study(study_name="s", storage=optuna_storage(settings.database_url))
    rng = random.Random(7)  # noqa: S311 (test data)
    running: list[optuna.Trial] = []
    _assert_reads_agree(client, study, "s")
    for _ in range(60):
        move = rng.random()
        if move < 0.35 or not running:
            running.append(ask_synthetic(study))
        elif move < 0.45:
            study.enqueue_trial({"x": 1.0, "y": 2})
        else:
            trial = running.pop(rng.randrange(len(running)))
            # Values repeat, so ties are decided by the trial number.
            end_at_random(study, trial, rng, float(rng.randint(0, 5)))
        _assert_reads_agree(client, study, "s")


def test_a_study_created_again_under_its_name_counts_afresh(
    client: TestClient, settings: Settings
) -> None:
    """SQLite reuses the ids of deleted rows; the new study must not inherit the old counts."""
    storage = optuna_storage(settings.database_url)
    client.post("/studies", json=synthetic("s")).raise_for_status()
    first = optuna.load_study(study_name="s", storage=storage)
    for value in (3.0, 1.0, 2.0):
        first.tell(first.ask(), value)
    _assert_reads_agree(client, first, "s")
    client.post("/studies/s/stop").raise_for_status()
    client.delete("/studies/s").raise_for_status()
    client.post("/studies", json=synthetic("s")).raise_for_status()
    second = optuna.load_study(study_name="s", storage=storage)
    second.tell(second.ask(), 5.0)
    second.ask()
    _assert_reads_agree(client, second, "s")
    assert client.get("/studies/s").json()["counts"]["COMPLETE"] == 1


def test_a_periodic_rebuild_reads_the_same(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.post("/studies", json=synthetic("s")).raise_for_status()
    study = optuna.load_study(study_name="s", storage=optuna_storage(settings.database_url))
    for value in (4.0, 2.0):
        study.tell(study.ask(), value)
    study.ask()
    _assert_reads_agree(client, study, "s")
    monkeypatch.setattr(trial_stats, "REBUILD_S", 0.0)  # every read counts from scratch
    study.tell(study.ask(), 1.0)
    _assert_reads_agree(client, study, "s")


def test_reads_while_a_periodic_rebuild_runs_do_not_rebuild_too(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild reads every trial; the reads that arrive meanwhile move the old snapshot
    on instead of each reading every trial too (at 10,000 trials under load, a pile of
    them held the summary's p99 at hundreds of milliseconds)."""
    storage = optuna_storage(database_url)
    study = optuna.create_study(study_name="r", storage=storage)
    for value in (3.0, 1.0, 2.0):
        study.tell(study.ask(), value)
    optuna_id = study._study_id
    engine = make_engine(database_url)
    clock = [1000.0]
    monkeypatch.setattr(trial_stats, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    with engine.connect() as conn:
        assert trial_stats.trial_stats(conn, optuna_id, "minimize").counts["COMPLETE"] == 3
    study.tell(study.ask(), 0.5)
    clock[0] += trial_stats.REBUILD_S + 1  # the snapshot is due to be counted again

    rebuilds, release = [], threading.Event()

    def hold_the_first_rebuild(*args: Any) -> None:
        statement, parameters = args[2], args[3]
        if "trial_values.value" not in statement or "trials.trial_id >=" not in statement:
            return
        first = parameters["first"] if isinstance(parameters, dict) else parameters[-1]
        if first == 0:  # from the first trial on: a rebuild
            rebuilds.append(threading.current_thread().name)
            if len(rebuilds) == 1:
                assert release.wait(30)

    event.listen(engine, "before_cursor_execute", hold_the_first_rebuild)
    results: dict[str, trial_stats.TrialStats] = {}

    def read(name: str) -> None:
        with engine.connect() as conn:
            results[name] = trial_stats.trial_stats(conn, optuna_id, "minimize")

    rebuilding = threading.Thread(target=read, args=("rebuilding",), name="rebuilding")
    rebuilding.start()
    deadline = time.monotonic() + 30
    while not rebuilds:
        assert time.monotonic() < deadline, "the first read did not start its rebuild"
        time.sleep(0.01)
    meanwhile = threading.Thread(target=read, args=("meanwhile",), name="meanwhile")
    meanwhile.start()
    meanwhile.join(30)
    release.set()
    rebuilding.join(30)
    engine.dispose()
    assert rebuilds == ["rebuilding"]
    for name in ("meanwhile", "rebuilding"):
        best = results[name].best
        assert results[name].counts["COMPLETE"] == 4
        assert best is not None
        assert best.value == 0.5
