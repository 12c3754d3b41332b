"""The read endpoints agree with what Optuna itself sees in the same database."""

from __future__ import annotations

import datetime as dt
import math

import optuna
import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from service.storage.db import optuna_storage
from tests.specs import synthetic


def _run_trials(settings: Settings, name: str, n: int) -> optuna.Study:
    """Run ``n`` trials of the synthetic space in-process, pruning every 4th."""
    study = optuna.load_study(study_name=name, storage=optuna_storage(settings.database_url))

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        y = trial.suggest_int("y", -10, 10)
        for step in range(3):
            trial.report((x - 2) ** 2 + step, step)
        if trial.number % 4 == 3:
            raise optuna.TrialPruned()
        return (x - 2) ** 2 + 0.5 * (y - 3) ** 2

    study.optimize(objective, n_trials=n)
    return study


def test_study_summary_counts_and_best(client: TestClient, settings: Settings) -> None:
    client.post(
        "/studies",
        json=synthetic(
            "s",
            sampler={"name": "RandomSampler", "args": {"seed": 0}},
        ),
    )
    study = _run_trials(settings, "s", 12)
    summary = client.get("/studies/s").json()
    assert summary["counts"] == {"RUNNING": 0, "WAITING": 0, "COMPLETE": 9, "PRUNED": 3, "FAIL": 0}
    assert summary["best_trial"] == study.best_trial.number
    assert summary["best_value"] == pytest.approx(study.best_value)
    assert summary["best_values"] == [pytest.approx(study.best_value)]
    assert summary["workers"] == []
    assert summary["spec"]["task"] == "synthetic"


def test_trials_page_filter_and_fields(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=synthetic("t"))
    study = _run_trials(settings, "t", 10)
    page = client.get("/studies/t/trials?limit=4&offset=2").json()
    assert page["total"] == 10
    assert (page["limit"], page["offset"]) == (4, 2)
    assert [t["number"] for t in page["items"]] == [2, 3, 4, 5]
    by_number = {t.number: t for t in study.trials}
    for item in page["items"]:
        frozen = by_number[item["number"]]
        assert item["state"] == frozen.state.name
        assert item["params"] == frozen.params
        assert item["intermediate_values"] == {
            str(k): v for k, v in frozen.intermediate_values.items()
        }
        assert item["values"] == frozen.values
        assert item["datetime_start"] is not None
        assert item["datetime_complete"] is not None

    pruned = client.get("/studies/t/trials?state=PRUNED").json()
    assert pruned["total"] == 2
    assert [t["number"] for t in pruned["items"]] == [3, 7]
    # Optuna keeps a pruned trial's last intermediate value as its value.
    assert [t["values"] for t in pruned["items"]] == [by_number[n].values for n in (3, 7)]


def test_pareto_front_of_a_multi_objective_study(client: TestClient, settings: Settings) -> None:
    spec = synthetic(
        "mo",
        objectives=[
            {"metric": "loss", "direction": "minimize"},
            {"metric": "score", "direction": "maximize"},
        ],
    )
    assert client.post("/studies", json=spec).status_code == 201
    study = optuna.load_study(study_name="mo", storage=optuna_storage(settings.database_url))

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        x = trial.suggest_float("x", -10, 10)
        return x**2, -((x - 3) ** 2)  # a trade-off between 0 and 3

    study.optimize(objective, n_trials=15)
    best = client.get("/studies/mo/best").json()
    assert best["directions"] == ["minimize", "maximize"]
    assert sorted(t["number"] for t in best["trials"]) == sorted(
        t.number for t in study.best_trials
    )
    summary = client.get("/studies/mo").json()
    assert summary["best_value"] is None  # no single best with two objectives


def test_best_of_a_study_without_trials_is_empty(client: TestClient) -> None:
    client.post("/studies", json=synthetic("empty"))
    assert client.get("/studies/empty/best").json() == {"directions": ["minimize"], "trials": []}
    assert client.get("/studies/empty").json()["best_value"] is None


def test_infinite_values_are_null_not_500(client: TestClient, settings: Settings) -> None:
    client.post("/studies", json=synthetic("inf"))
    study = optuna.load_study(study_name="inf", storage=optuna_storage(settings.database_url))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -1, 1)
        trial.report(math.inf, 0)
        return math.inf

    study.optimize(objective, n_trials=1)
    response = client.get("/studies/inf/trials")
    assert response.status_code == 200
    (trial,) = response.json()["items"]
    assert trial["values"] == [None]
    assert trial["intermediate_values"] == {"0": None}


def test_intermediate_values_in_step_order_with_nan_as_null(
    client: TestClient, settings: Settings
) -> None:
    client.post("/studies", json=synthetic("steps"))
    study = optuna.load_study(study_name="steps", storage=optuna_storage(settings.database_url))

    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", -1, 1)
        for step in (10, 2, 7):  # reported out of order
            trial.report(float(step), step)
        trial.report(math.nan, 3)
        return 1.0

    study.optimize(objective, n_trials=1)
    (trial,) = client.get("/studies/steps/trials").json()["items"]
    assert list(trial["intermediate_values"].items()) == [
        ("2", 2.0),
        ("3", None),
        ("7", 7.0),
        ("10", 10.0),
    ]


def test_reads_of_a_study_whose_optuna_study_is_gone_or_foreign(
    client: TestClient, settings: Settings
) -> None:
    storage = optuna_storage(settings.database_url)
    client.post("/studies", json=synthetic("gone"))
    optuna.delete_study(study_name="gone", storage=storage)
    # An Optuna study the service did not create is not one of its studies.
    optuna.create_study(study_name="foreign", storage=storage)
    for path in ("", "/trials", "/best"):
        gone = client.get(f"/studies/gone{path}")
        assert gone.status_code == 404, path
        assert "deleted outside the service" in gone.json()["detail"]
        foreign = client.get(f"/studies/foreign{path}")
        assert foreign.status_code == 404, path
        assert "no study named 'foreign'" in foreign.json()["detail"]


def test_list_studies_newest_first_paginated(client: TestClient) -> None:
    for name in ("a", "b", "c"):
        assert client.post("/studies", json=synthetic(name)).status_code == 201
    page = client.get("/studies?limit=2").json()
    assert page["total"] == 3
    assert [s["name"] for s in page["items"]] == ["c", "b"]
    assert [s["name"] for s in client.get("/studies?limit=2&offset=2").json()["items"]] == ["a"]


def test_stop_study_then_stop_again_is_409(client: TestClient) -> None:
    client.post("/studies", json=synthetic("halt"))
    stopped = client.post("/studies/halt/stop")
    assert stopped.status_code == 200
    assert stopped.json()["status"] == "stopped"
    assert stopped.json()["finished_at"] is not None
    again = client.post("/studies/halt/stop")
    assert again.status_code == 409
    assert "is stopped" in again.json()["detail"]


def test_timestamps_are_utc_with_their_offset(client: TestClient, settings: Settings) -> None:
    before = dt.datetime.now(dt.UTC)
    client.post("/studies", json=synthetic("when"))
    _run_trials(settings, "when", 1)
    stopped = client.post("/studies/when/stop").json()
    listed = client.get("/studies").json()["items"][0]
    trial = client.get("/studies/when/trials").json()["items"][0]
    after = dt.datetime.now(dt.UTC)
    stamps = {
        "created_at": stopped["created_at"],
        "finished_at": stopped["finished_at"],
        "listed created_at": listed["created_at"],
        "datetime_start": trial["datetime_start"],
        "datetime_complete": trial["datetime_complete"],
    }
    for field, stamp in stamps.items():
        moment = dt.datetime.fromisoformat(stamp)
        assert moment.utcoffset() == dt.timedelta(0), (field, stamp)
        assert before - dt.timedelta(seconds=1) <= moment <= after, (field, stamp)


def test_tasks_health_and_docs(client: TestClient) -> None:
    tasks = {t["name"]: t for t in client.get("/tasks").json()}
    assert set(tasks) >= {"digits", "synthetic"}
    digits = tasks["digits"]
    assert digits["metrics"] == ["accuracy", "loss"]
    assert digits["default_objectives"] == [{"metric": "accuracy", "direction": "maximize"}]
    space = digits["default_search_space"]
    assert set(space) == {
        "lr",
        "hidden",
        "dropout",
        "optimizer",
        "batch_size",
        *["momentum", "beta1", "beta2"],
    }
    assert space["momentum"]["when"] == {"optimizer": ["sgd"]}
    assert "when" not in space["lr"]  # an unconditional parameter reads as before
    assert client.get("/healthz").json() == {"status": "ok"}
    schema = client.get("/openapi.json").json()
    assert {
        "/studies",
        "/studies/{name}",
        "/studies/{name}/trials",
        "/studies/{name}/best",
        "/studies/{name}/stop",
        "/tasks",
        "/healthz",
    } <= set(schema["paths"])
    assert "swagger" in client.get("/docs").text.lower()


def test_unknown_route_uses_the_error_shape(client: TestClient) -> None:
    response = client.get("/nothing-here")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "Not Found", "errors": []}
