"""Trial pages agree with Optuna while trials run and end; finished trials are read once."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from service.artifacts import retention
from service.settings import Settings
from service.storage.db import optuna_storage
from tests.specs import ask_synthetic, end_at_random, synthetic


def _page(client: TestClient, name: str, **params: Any) -> list[dict[str, Any]]:
    response = client.get(f"/studies/{name}/trials", params={"limit": 1000, **params})
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def _as_optuna_sees(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    def finite(v: float | None) -> float | None:
        return v if v is not None and math.isfinite(v) else None

    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": trial.params,
        "values": [finite(v) for v in trial.values] if trial.values else None,
        "intermediate_values": {str(k): finite(v) for k, v in trial.intermediate_values.items()},
    }


_KEYS = ("number", "state", "params", "values", "intermediate_values")


def _assert_pages_agree(client: TestClient, study: optuna.Study, name: str) -> None:
    truth = [_as_optuna_sees(t) for t in study.get_trials(deepcopy=False)]
    for state in (None, "COMPLETE", "RUNNING"):
        served = _page(client, name, **({"state": state} if state else {}))
        assert [{k: t[k] for k in _KEYS} for t in served] == [
            t for t in truth if state is None or t["state"] == state
        ], state


def test_pages_follow_trials_that_report_and_end(client: TestClient, settings: Settings) -> None:
    """Running trials report intermediate values, then complete, prune or fail; every
    page read in between shows what Optuna holds at that moment."""
    client.post("/studies", json=synthetic("p")).raise_for_status()
    study = optuna.load_study(study_name="p", storage=optuna_storage(settings.database_url))
    rng = random.Random(3)  # noqa: S311 (test data)
    running: list[tuple[optuna.Trial, int]] = []
    for _ in range(50):
        move = rng.random()
        if move < 0.3 or not running:
            running.append((ask_synthetic(study), 0))
        elif move < 0.6:
            i = rng.randrange(len(running))
            trial, step = running[i]
            trial.report(rng.choice([rng.random(), float("nan")]), step)
            running[i] = (trial, step + 1)
        else:
            trial, _ = running.pop(rng.randrange(len(running)))
            end_at_random(study, trial, rng, rng.random())
        _assert_pages_agree(client, study, "p")


@contextmanager
def _trials_read(engine: Engine) -> Iterator[list[int]]:
    """How many trials each query of trial params (one per page read) fetched."""
    seen: list[int] = []

    def record(*args: Any) -> None:
        statement, parameters = args[2], args[3]
        if "FROM trial_params" not in statement:
            return
        if isinstance(parameters, dict):  # one array of ids
            seen.append(len(parameters["ids"]))
        else:  # one placeholder per id
            seen.append(statement.split(" IN (")[1].split(")")[0].count("?"))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_finished_trials_are_read_from_the_database_once(
    client: TestClient, settings: Settings
) -> None:
    client.post("/studies", json=synthetic("once")).raise_for_status()
    study = optuna.load_study(study_name="once", storage=optuna_storage(settings.database_url))
    for i in range(5):
        trial = study.ask({"x": optuna.distributions.FloatDistribution(-10, 10)})
        trial.report(float(i), 0)
        study.tell(trial, float(i))
    running = study.ask({"x": optuna.distributions.FloatDistribution(-10, 10)})
    engine: Engine = client.app.state.sessions.kw["bind"]  # type: ignore[attr-defined]
    first = _page(client, "once")
    with _trials_read(engine) as again:
        assert _page(client, "once") == first
    assert again == [1]  # of six: the running one
    study.tell(running, 9.0)
    after = _page(client, "once")
    assert after[-1]["state"] == "COMPLETE"
    assert after[-1]["values"] == [9.0]
    with _trials_read(engine) as last:
        assert _page(client, "once") == after
    assert last == []


def test_a_trial_id_given_out_again_is_not_read_from_an_earlier_study(
    client: TestClient, settings: Settings
) -> None:
    """SQLite gives the largest ids of a deleted study's trials out again."""
    storage = optuna_storage(settings.database_url)
    for value in (1.0, 2.0):
        client.post("/studies", json=synthetic("again")).raise_for_status()
        study = optuna.load_study(study_name="again", storage=storage)
        trial = study.ask({"x": optuna.distributions.FloatDistribution(-10, 10)})
        study.tell(trial, value)
        assert [t["values"] for t in _page(client, "again")] == [[value]]
        client.post("/studies/again/stop").raise_for_status()
        client.delete("/studies/again").raise_for_status()


def test_disk_usage_is_counted_again_once_a_trial_starts_or_ends(
    client: TestClient, settings: Settings
) -> None:
    client.post("/studies", json=synthetic("d")).raise_for_status()
    study = optuna.load_study(study_name="d", storage=optuna_storage(settings.database_url))
    trial = study.ask({"x": optuna.distributions.FloatDistribution(-10, 10)})
    folder = settings.data_dir / "studies" / "d" / "trials" / "0"
    folder.mkdir(parents=True)
    (folder / "a").write_bytes(b"x" * 10)

    def checkpoint_bytes() -> int:
        count: int = client.get("/studies/d").json()["disk"]["checkpoints_bytes"]
        return count

    assert checkpoint_bytes() == 10
    (folder / "b").write_bytes(b"x" * 5)
    assert checkpoint_bytes() == 10  # counted a moment ago, for the same trials
    study.tell(trial, 1.0)
    assert checkpoint_bytes() == 15


def test_disk_usage_of_unchanged_trials_is_counted_again_after_a_while(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.post("/studies", json=synthetic("d")).raise_for_status()
    assert client.get("/studies/d").json()["disk"]["checkpoints_bytes"] == 0
    folder = settings.data_dir / "studies" / "d" / "trials" / "0"
    folder.mkdir(parents=True)
    (folder / "a").write_bytes(b"x" * 3)
    monkeypatch.setattr(retention, "DISK_USAGE_MAX_AGE_S", 0.0)
    assert client.get("/studies/d").json()["disk"]["checkpoints_bytes"] == 3
