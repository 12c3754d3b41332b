"""Bad input gets a clear error, names the field, and writes nothing."""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from service.api import security
from service.settings import Settings
from service.storage.db import make_engine, optuna_storage
from service.storage.rows import StudyRow, WorkerRow
from service.tasks import registry
from service.tasks.registry import get_task, register_task
from tests.specs import synthetic

GOOD: dict[str, Any] = {
    "name": "digits-demo",
    "task": "digits",
    "objectives": [{"metric": "accuracy", "direction": "maximize"}],
    "search_space": {
        "lr": {"type": "float", "low": 1e-5, "high": 0.3, "log": True},
        "hidden": {"type": "int", "low": 16, "high": 256, "step": 16},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
    },
    "sampler": {"name": "TPESampler", "args": {"seed": 1}},
    "pruner": {"name": "MedianPruner", "args": {"n_startup_trials": 3}},
    "n_trials": 20,
    "timeout_s": None,
    "max_failed_trials": 5,
    "task_args": {"epochs": 10},
    "enqueue_trials": [{"lr": 0.01, "hidden": 64, "optimizer": "adam"}],
    "workers": {"count": 2, "gpus_per_worker": 0, "launcher": "local"},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """GOOD with the value at a dotted path replaced (None deletes)."""
    spec = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = spec
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is None and isinstance(node, dict):
        node.pop(last, None)
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return spec


# kind and y always; x only for the shifted kind; z only when y >= 1.
CONDITIONAL: dict[str, Any] = {
    "kind": {"type": "categorical", "choices": ["bowl", "shifted"]},
    "y": {"type": "int", "low": -3, "high": 3},
    "x": {"type": "float", "low": -5.0, "high": 5.0, "when": {"kind": ["shifted"]}},
    "z": {"type": "float", "low": -1.0, "high": 1.0, "when": {"y": {"min": 1}}},
}


def _conditional(enqueue: list[dict[str, Any]] | None = None, **when: Any) -> dict[str, Any]:
    """A synthetic spec of the CONDITIONAL space, with parameters' conditions replaced."""
    space = copy.deepcopy(CONDITIONAL)
    for name, condition in when.items():
        space[name]["when"] = condition
    return synthetic("cond", search_space=space, enqueue_trials=enqueue or [])


BAD = [
    pytest.param(
        _with("search_space.lr.low", 0.5),
        "search_space.lr",
        "low (0.5) must be < high",
        id="low>=high",
    ),
    pytest.param(
        _with("search_space.hidden", {"type": "int", "low": 8, "high": 8}),
        "search_space.hidden",
        "must be < high",
        id="int-low==high",
    ),
    pytest.param(
        _with("search_space.lr", {"type": "float", "low": 0.0, "high": 1.0, "log": True}),
        "search_space.lr",
        "log needs low > 0",
        id="log-low<=0",
    ),
    pytest.param(
        _with("search_space.hidden.step", 100),
        "search_space.hidden",
        "step 100 does not divide",
        id="int-step",
    ),
    pytest.param(
        _with("search_space.dropout", {"type": "float", "low": 0, "high": 0.5, "step": 0.2}),
        "search_space.dropout",
        "step 0.2 does not divide",
        id="float-step",
    ),
    pytest.param(
        _with("search_space.optimizer.choices", []),
        "search_space.optimizer.choices",
        "at least 1 item",
        id="empty-choices",
    ),
    pytest.param(
        _with("search_space.optimizer.choices", ["adam", ["sgd"]]),
        "search_space.optimizer",
        "choices must be null, booleans, numbers or strings; choice 1 is list",
        id="non-scalar-choice",
    ),
    pytest.param(
        _with("search_space.optimizer.choices", ["adam", {"a": 1}]),
        "search_space.optimizer",
        "choice 1 is dict",
        id="object-choice",
    ),
    # Warm starts.
    pytest.param(
        synthetic("warm", warm_start={"from_study": "a", "trials": "some"}),
        "warm_start.trials",
        "'complete' or 'all_finished'",
        id="warm-start-trials-unknown",
    ),
    pytest.param(
        synthetic("warm", warm_start={"from_study": "a", "limit": 0}),
        "warm_start.limit",
        "greater than or equal to 1",
        id="warm-start-limit-zero",
    ),
    # Constraints.
    pytest.param(
        synthetic("bound", constraints=[{"metric": "latency_ms", "max": 10}]),
        "constraints.0.metric",
        "task 'synthetic' produces ['loss', 'score', 'cost'], not 'latency_ms'",
        id="constraint-on-unknown-metric",
    ),
    pytest.param(
        synthetic("bound", constraints=[{"metric": "cost"}]),
        "constraints.0",
        "give max, min or both",
        id="constraint-without-bound",
    ),
    pytest.param(
        synthetic("bound", constraints=[{"metric": "cost", "min": 2, "max": 1}]),
        "constraints.0",
        "min (2.0) must be <= max (1.0)",
        id="constraint-min-above-max",
    ),
    pytest.param(
        # Both bounds were stored under one name: the looser one counted, silently.
        synthetic(
            "bound", constraints=[{"metric": "cost", "max": 5}, {"metric": "cost", "max": 1}]
        ),
        "constraints.1.metric",
        "'cost' is bounded by constraints.0 already",
        id="constraint-twice-on-one-metric",
    ),
    pytest.param(
        synthetic("bound", constraints=[{"metric": "cost", "max": True}]),
        "constraints.0.max",
        "valid number",
        id="constraint-bound-true",
    ),
    # Conditional parameters.
    pytest.param(
        _conditional(x={"kind": []}),  # accepted: x was never searched
        "search_space.x.when.kind",
        "list the values of kind it is searched for",
        id="condition-empty",
    ),
    pytest.param(
        _conditional(x={"w": ["a"]}),
        "search_space.x.when.w",
        "no parameter 'w'; parameters: ['kind', 'x', 'y', 'z']",
        id="condition-on-unknown",
    ),
    pytest.param(
        _conditional(z={"x": [1.0]}),
        "search_space.z.when.x",
        "x is a float: conditions read categorical or int parameters",
        id="condition-on-float",
    ),
    pytest.param(
        _conditional(x={"kind": ["round"]}),
        "search_space.x.when.kind.0",
        "kind never takes it: 'round' is not one of the choices",
        id="condition-value-not-a-choice",
    ),
    pytest.param(
        _conditional(z={"y": [7]}),
        "search_space.z.when.y.0",
        "y never takes it: 7 is outside [-3, 3]",
        id="condition-value-outside-int-range",
    ),
    pytest.param(
        _conditional(z={"y": [True]}),
        "search_space.z.when.y.0",
        "y never takes it: must be a number, got True",
        id="condition-bool-for-int",
    ),
    pytest.param(
        _conditional(x={"kind": {"min": 1}}),
        "search_space.x.when.kind",
        "kind is categorical: list the values",
        id="range-condition-on-categorical",
    ),
    pytest.param(
        _conditional(z={"y": {"min": 5}}),
        "search_space.z.when.y",
        "no value of y (-3 to 3) is in that range",
        id="range-condition-outside",
    ),
    pytest.param(
        _conditional(y={"y": [1]}),
        "search_space.y.when.y",
        "a parameter cannot depend on itself",
        id="condition-on-itself",
    ),
    pytest.param(
        _conditional(kind={"y": [1]}, y={"kind": ["bowl"]}),
        "search_space",
        "the conditions of ['kind', 'x', 'y', 'z'] depend on each other in a cycle",
        id="condition-cycle",
    ),
    pytest.param(
        _conditional(enqueue=[{"kind": "bowl", "y": 0, "x": 1.0}]),
        "enqueue_trials.0.x",
        "not searched when kind in ['shifted'] does not hold",
        id="enqueued-inactive-parameter",
    ),
    pytest.param(
        _conditional(enqueue=[{"kind": "bowl", "y": 2}]),
        "enqueue_trials.0.z",
        "searched when y in {'min': 1}: give it a value",
        id="enqueued-active-parameter-left-out",
    ),
    pytest.param(
        _conditional(enqueue=[{"x": 1.0}]),
        "enqueue_trials.0.x",
        "its condition reads ['kind']: give them too",
        id="enqueued-child-without-parent",
    ),
    # Optuna finds a choice by ==: these are one value to it.
    pytest.param(
        _with("search_space.batch_size.choices", [32, 64, 32.0]),
        "search_space.batch_size",
        "equal to Optuna: choice 0 (32) and choice 2 (32.0)",
        id="int-and-float-choice-equal",
    ),
    pytest.param(
        synthetic(
            "eq", search_space={"x": {"type": "categorical", "choices": [1, "1", True, None, 1.0]}}
        ),
        "search_space.x",
        "choice 0 (1) and choice 2 (True) and choice 4 (1.0)",
        id="bool-equal-to-int-choice",
    ),
    pytest.param(
        synthetic("eq", search_space={"y": {"type": "categorical", "choices": [0, False]}}),
        "search_space.y",
        "choice 0 (0) and choice 1 (False)",
        id="false-equal-to-zero",
    ),
    # Values of a type the task's parameter cannot take.
    pytest.param(
        synthetic(
            "typed", search_space={"x": {"type": "categorical", "choices": [1.5, None, "a"]}}
        ),
        "search_space.x.choices.1",
        "task 'synthetic' takes x as a number; None is not one",
        id="null-choice-for-a-float",
    ),
    pytest.param(
        synthetic(
            "typed", search_space={"x": {"type": "categorical", "choices": [1.5, None, "a"]}}
        ),
        "search_space.x.choices.2",
        "'a' is not one",
        id="string-choice-for-a-float",
    ),
    pytest.param(
        synthetic("typed", search_space={"y": {"type": "categorical", "choices": [1, 2.5]}}),
        "search_space.y.choices.1",
        "takes y as an integer; 2.5 is not one",
        id="float-choice-for-an-int",
    ),
    pytest.param(
        synthetic("typed", search_space={"y": {"type": "float", "low": 0, "high": 1}}),
        "search_space.y.type",
        "a float range gives fractions: use type int",
        id="float-range-for-an-int",
    ),
    pytest.param(
        _with("search_space.optimizer", {"type": "int", "low": 0, "high": 3}),
        "search_space.optimizer.type",
        "takes optimizer as a string; use type categorical",
        id="int-range-for-a-string",
    ),
    pytest.param(
        _with("search_space.optimizer.choices", ["adam", True]),
        "search_space.optimizer.choices.1",
        "takes optimizer as a string; True is not one",
        id="bool-choice-for-a-string",
    ),
    pytest.param(
        _with("search_space.lr.type", "uniform"),
        "search_space.lr",
        "",
        id="unknown-param-type",
    ),
    pytest.param(
        _with("sampler", {"name": "FancySampler"}),
        "sampler.name",
        "unknown sampler 'FancySampler'; known: ",
        id="unknown-sampler",
    ),
    pytest.param(
        _with("pruner", {"name": "EagerPruner"}),
        "pruner.name",
        "unknown pruner 'EagerPruner'",
        id="unknown-pruner",
    ),
    pytest.param(
        _with("sampler.args", {"seeed": 1}),
        "sampler.args",
        "unknown argument(s) ['seeed']",
        id="unknown-sampler-arg",
    ),
    pytest.param(
        _with("pruner.args", {"n_startup_trials": -1}),
        "pruner.args",
        "MedianPruner:",
        id="bad-pruner-arg-value",
    ),
    pytest.param(
        _with(
            "objectives",
            [
                {"metric": "accuracy", "direction": "maximize"},
                {"metric": "loss", "direction": "minimize"},
            ],
        ),
        "pruner",
        "multi-objective study cannot prune",
        id="pruner-on-multi-objective",
    ),
    pytest.param(
        _with("objectives.0.metric", "f1"),
        "objectives.0.metric",
        "task 'digits' produces ['accuracy', 'loss'], not 'f1'",
        id="unknown-metric",
    ),
    pytest.param(
        _with("task", "imagenet"),
        "task",
        "unknown task 'imagenet'; registered tasks: digits",
        id="unknown-task",
    ),
    pytest.param(
        _with("enqueue_trials", [{"lr": 0.5}]),
        "enqueue_trials.0.lr",
        "outside [1e-05, 0.3]",
        id="enqueued-outside",
    ),
    pytest.param(
        _with("enqueue_trials", [{"optimizer": "rmsprop"}]),
        "enqueue_trials.0.optimizer",
        "not one of the choices",
        id="enqueued-bad-choice",
    ),
    pytest.param(
        _with("enqueue_trials", [{"momentum": 0.9}]),
        "enqueue_trials.0.momentum",
        "not in the search space",
        id="enqueued-unknown-param",
    ),
    pytest.param(
        _with("enqueue_trials", [{"hidden": 20}]),
        "enqueue_trials.0.hidden",
        "not on the grid",
        id="enqueued-off-grid",
    ),
    pytest.param(
        _with("enqueue_trials", [{"lr": [0.1]}]),
        "enqueue_trials.0.lr",
        "must be a number",
        id="enqueued-non-scalar",
    ),
    pytest.param(_with("name", "-leading-dash"), "name", "should match pattern", id="name-dash"),
    pytest.param(_with("name", "has space"), "name", "should match pattern", id="name-space"),
    pytest.param(_with("name", "x" * 65), "name", "", id="name-too-long"),
    pytest.param(_with("name", "a/b"), "name", "should match pattern", id="name-slash"),
    pytest.param(_with("n_trials", 0), "n_trials", "greater than or equal to 1", id="n_trials-0"),
    pytest.param(
        _with("n_trials", 1_000_001),
        "n_trials",
        "less than or equal to 1000000",
        id="n_trials-over-limit",
    ),
    pytest.param(
        _with("search_space", {f"p{i}": {"type": "int", "low": 0, "high": 1} for i in range(257)}),
        "search_space",
        "at most 256",
        id="too-many-parameters",
    ),
    pytest.param(
        _with("search_space.optimizer", {"type": "categorical", "choices": list(range(1001))}),
        "search_space.optimizer.choices",
        "at most 1000",
        id="too-many-choices",
    ),
    pytest.param(
        _with("task_args", {"epochz": 3}),
        "task_args.epochz",
        "unknown argument",
        id="unknown-task-arg",
    ),
    pytest.param(
        _with("task_args", {"epochs": "ten"}), "task_args.epochs", "must be int", id="task-arg-type"
    ),
    pytest.param(
        _with("workers.gpus_per_worker", 1),
        "workers.gpus_per_worker",
        "1 GPUs per worker asked, this service has 0",
        id="no-gpus",
    ),
    pytest.param(
        _with("workers.ranks_per_trial", 0),
        "workers.ranks_per_trial",
        "must be an integer from 1 to 16, or 'auto'; got 0",
        id="ranks-0",
    ),
    pytest.param(
        _with("workers.ranks_per_trial", "all"),
        "workers.ranks_per_trial",
        "must be an integer from 1 to 16, or 'auto'; got 'all'",
        id="ranks-word",
    ),
    pytest.param(
        _with("workers", {"count": 1, "gpus_per_worker": 2, "ranks_per_trial": 3}),
        "workers.ranks_per_trial",
        "one rank per GPU: 2 (or auto) with gpus_per_worker 2",
        id="ranks-not-gpus",
    ),
    pytest.param(
        _with("surprise", True), "surprise", "Extra inputs are not permitted", id="unknown-field"
    ),
    # Strict types: a boolean or a numeric string is not a number.
    pytest.param(_with("n_trials", True), "n_trials", "valid integer", id="n_trials-true"),
    pytest.param(_with("n_trials", "5"), "n_trials", "valid integer", id="n_trials-string"),
    pytest.param(_with("n_trials", 5.0), "n_trials", "valid integer", id="n_trials-float"),
    pytest.param(_with("timeout_s", True), "timeout_s", "valid number", id="timeout-true"),
    pytest.param(_with("max_retries", "1"), "max_retries", "valid integer", id="retries-str"),
    pytest.param(
        _with("workers.count", True), "workers.count", "valid integer", id="workers-count-true"
    ),
    pytest.param(
        _with("search_space.hidden.low", True),
        "search_space.hidden.low",
        "valid integer",
        id="int-low-true",
    ),
    pytest.param(
        _with("search_space.lr.log", 1), "search_space.lr.log", "valid boolean", id="log-one"
    ),
    # Bounds whose span or grid overflows.
    pytest.param(
        _with("search_space.dropout", {"type": "float", "low": 0, "high": 1e308, "step": 1e-300}),
        "search_space.dropout",
        "more than 2**53 values",
        id="float-grid-overflow",
    ),
    pytest.param(
        _with("search_space.dropout", {"type": "float", "low": -1.7e308, "high": 1.7e308}),
        "search_space.dropout",
        "high - low overflows",
        id="float-span-overflow",
    ),
    pytest.param(
        _with("search_space.hidden", {"type": "int", "low": 0, "high": 2**60}),
        "search_space.hidden",
        "within -2**53 and 2**53",
        id="int-beyond-float",
    ),
    pytest.param(
        _with("objectives", [{"metric": "accuracy", "direction": "maximize"}] * 2),
        "objectives",
        "distinct metrics",
        id="duplicate-objectives",
    ),
    # Specs that could never run.
    pytest.param(_with("task_args", {"epochs": 0}), "task_args.epochs", ">= 1", id="zero-epochs"),
    pytest.param(
        _with("task_args", {"valid_fraction": 1.5}),
        "task_args.valid_fraction",
        "<= 0.95",
        id="valid-fraction",
    ),
    pytest.param(
        _with("sampler", {"name": "TPESampler", "args": {"n_startup_trials": "a"}}),
        "sampler.args.n_startup_trials",
        "n_startup_trials must be int, got 'a'",
        id="sampler-arg-type",
    ),
    pytest.param(
        _with("pruner", {"name": "MedianPruner", "args": {"n_warmup_steps": 1.5}}),
        "pruner.args.n_warmup_steps",
        "must be int",
        id="pruner-arg-type",
    ),
    pytest.param(
        _with("sampler", {"name": "GridSampler", "args": {"search_space": {"lr": [0.01]}}}),
        "sampler.args.search_space",
        "the grid has no values for ['batch_size', 'dropout', 'hidden', 'optimizer']",
        id="grid-missing-parameter",
    ),
    pytest.param(
        _with(
            "sampler",
            {
                "name": "GridSampler",
                "args": {
                    "search_space": {
                        "lr": [0.01, 0.9],
                        "hidden": [16],
                        "dropout": [0.1],
                        "optimizer": ["adam"],
                        "batch_size": [32],
                    }
                },
            },
        ),
        "sampler.args.search_space.lr.1",
        "0.9 is outside [1e-05, 0.3]",
        id="grid-value-outside",
    ),
    pytest.param(
        _with("search_space.weight_decay", {"type": "float", "low": 0.0, "high": 0.99}),
        "search_space.weight_decay",
        "task 'digits' has no parameter 'weight_decay'",
        id="unknown-task-parameter",
    ),
]


def _nothing_written(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(StudyRow)) == 0
        assert conn.scalar(select(func.count()).select_from(WorkerRow)) == 0
    engine.dispose()
    assert optuna.get_all_study_names(optuna_storage(settings.database_url)) == []


@pytest.mark.parametrize(("spec", "field", "reason"), BAD)
def test_bad_spec_is_422_naming_the_field(
    client: TestClient, settings: Settings, spec: dict[str, Any], field: str, reason: str
) -> None:
    response = client.post("/studies", json=spec)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] in ("invalid_spec", "invalid_request")
    fields = {e["field"]: e["message"] for e in body["errors"]}
    assert field in fields, body
    assert reason in fields[field], body
    assert field in body["detail"]
    _nothing_written(settings)


def test_good_spec_is_created_with_defaults_filled(client: TestClient) -> None:
    response = client.post("/studies", json=synthetic("defaults"))
    assert response.status_code == 201, response.text
    study = response.json()
    spec = study["spec"]
    assert spec["sampler"] == {"name": "TPESampler", "args": {}}
    assert spec["pruner"] == {"name": "SuccessiveHalvingPruner", "args": {}}
    assert spec["workers"] == {
        "count": 1,
        "gpus_per_worker": 0,
        "launcher": "local",
        "image": None,
        "ranks_per_trial": 1,
    }
    assert spec["objectives"] == [{"metric": "loss", "direction": "minimize"}]
    assert set(spec["search_space"]) == {"x", "y"}
    assert study["directions"] == ["minimize"]
    assert study["status"] == "running"


def test_a_conditional_space_gets_grouped_tpe_unless_the_spec_names_a_sampler(
    client: TestClient,
) -> None:
    spec = _conditional(enqueue=[{"kind": "shifted", "y": 2, "x": 1.0, "z": 0.5}])
    response = client.post("/studies", json=spec)
    assert response.status_code == 201, response.text
    stored = response.json()["spec"]
    assert stored["sampler"] == {
        "name": "TPESampler",
        "args": {"multivariate": True, "group": True},
    }
    assert stored["search_space"]["z"]["when"] == {"y": {"min": 1}}
    assert stored["search_space"]["x"]["when"] == {"kind": ["shifted"]}
    named = {**_conditional(), "name": "cond-random", "sampler": {"name": "RandomSampler"}}
    response = client.post("/studies", json=named)
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["sampler"] == {"name": "RandomSampler", "args": {}}


def test_a_warm_start_from_no_study_or_other_directions_is_422_and_writes_nothing(
    client: TestClient, settings: Settings
) -> None:
    spec = synthetic("warm", warm_start={"from_study": "nowhere"})
    response = client.post("/studies", json=spec)
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"field": "warm_start.from_study", "message": "no study named 'nowhere' to start from"}
    ]
    _nothing_written(settings)
    storage = optuna_storage(settings.database_url)
    optuna.create_study(study_name="upward", storage=storage, direction="maximize")
    response = client.post("/studies", json={**spec, "warm_start": {"from_study": "upward"}})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {
            "field": "warm_start.from_study",
            "message": "'upward' optimizes ['maximize']; this study ['minimize']",
        }
    ]
    assert optuna.get_all_study_names(storage) == ["upward"]  # nothing else written
    # A study still being created (its trials not all there yet) was a source too.
    assert client.post("/studies", json=synthetic("young")).status_code == 201
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:
        conn.execute(update(StudyRow).where(StudyRow.name == "young").values(status="creating"))
    engine.dispose()
    response = client.post("/studies", json={**spec, "warm_start": {"from_study": "young"}})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {
            "field": "warm_start.from_study",
            "message": "study 'young' is still being created; start from it once it runs",
        }
    ]


def test_full_example_spec_is_accepted_and_warm_starts_enqueued(client: TestClient) -> None:
    response = client.post("/studies", json=GOOD)
    assert response.status_code == 201, response.text
    assert response.json()["counts"]["WAITING"] == 1


def test_multi_objective_without_pruner_is_accepted(client: TestClient) -> None:
    spec = _with(
        "objectives",
        [
            {"metric": "accuracy", "direction": "maximize"},
            {"metric": "loss", "direction": "minimize"},
        ],
    )
    spec.pop("pruner")
    response = client.post("/studies", json=spec)
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["pruner"] is None
    assert response.json()["directions"] == ["maximize", "minimize"]


def test_existing_name_is_409_and_changes_nothing(client: TestClient, settings: Settings) -> None:
    assert client.post("/studies", json=GOOD).status_code == 201
    again = client.post(
        "/studies",
        json={
            **GOOD,
            "task": "synthetic",
            "search_space": None,
            "objectives": None,
            "enqueue_trials": [],
        },
    )
    assert again.status_code == 409
    assert again.json()["code"] == "conflict"
    assert "exists" in again.json()["detail"]
    study = client.get("/studies/digits-demo").json()
    assert study["task"] == "digits"
    assert study["counts"]["WAITING"] == 1


def test_optuna_study_of_that_name_is_409(client: TestClient, settings: Settings) -> None:
    optuna.create_study(study_name="digits-demo", storage=optuna_storage(settings.database_url))
    response = client.post("/studies", json=GOOD)
    assert response.status_code == 409
    assert "Optuna study named 'digits-demo' exists" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/studies/nope", "/studies/nope/trials", "/studies/nope/best"])
def test_unknown_study_is_404(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "no study named 'nope'", "errors": []}


def test_stop_unknown_study_is_404(client: TestClient) -> None:
    assert client.post("/studies/nope/stop").status_code == 404


def test_malformed_json_is_400_naming_the_body(client: TestClient, settings: Settings) -> None:
    response = client.post(
        "/studies", content=b'{"name": "x",\n "task"', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_json"
    assert body["errors"] == [{"field": "body", "message": body["detail"]}]
    assert body["detail"].startswith("the body is not valid JSON: ")
    assert body["detail"].endswith("Expecting ':' delimiter at byte 21")  # the body's end
    _nothing_written(settings)


YAML_SPEC = """
name: from-yaml
task: synthetic
n_trials: 3
search_space:
  x: {type: float, low: -1.0, high: 1.0}
  y: {type: categorical, choices: [1, 2]}
workers: {count: 1}
"""


@pytest.mark.parametrize("content_type", ["application/yaml", "application/x-yaml", "text/yaml"])
def test_a_yaml_spec_makes_the_same_study_as_json(client: TestClient, content_type: str) -> None:
    response = client.post(
        "/studies", content=YAML_SPEC.encode(), headers={"content-type": content_type}
    )
    assert response.status_code == 201, response.text
    spec = response.json()["spec"]
    assert spec["search_space"]["y"] == {"type": "categorical", "choices": [1, 2]}
    assert spec["n_trials"] == 3


@pytest.mark.parametrize(
    ("text", "field", "reason"),
    [
        (YAML_SPEC.replace("n_trials: 3", "n_trials: yes"), "n_trials", "valid integer"),
        (YAML_SPEC.replace("[1, 2]", "[1, true]"), "search_space.y", "equal to Optuna"),
        (YAML_SPEC.replace("low: -1.0", "low: .nan"), "body", "NaN and infinity"),
        (YAML_SPEC.replace("task: synthetic", "task: [synthetic"), "body", "line 4, column"),
        ("a: &x [1, 2]\nb: *x\n", "body", "aliases (*name) are not accepted"),
        ("a: !!python/object:os.system 'true'\n", "body", "tags (!!python/object:os.system)"),
        ("[" * 5000 + "]" * 5000, "body", "nested too deeply"),
        # YAML 1.1's surprises: a base-60 number, bytes and sets as Python's repr strings.
        (YAML_SPEC.replace("n_trials: 3", "n_trials: 1:20"), "n_trials", "valid integer"),
        (YAML_SPEC + "task_args: {seed: !!binary Ym93bA==}\n", "body", "line 9, column 19: tags"),
        (YAML_SPEC + "task_args: {s: !!set {a, b}}\n", "body", "tags (!!set)"),
        # Keys that were dates or bytes: a 500 (TypeError) on writing the JSON.
        (YAML_SPEC + "2024-01-01: x\n", "2024-01-01", "Extra inputs"),
        (YAML_SPEC + "? !!binary Ym93bA==\n: x\n", "body", "tags (!!binary)"),
        (YAML_SPEC + "1: x\n", "body", "keys must be strings, not 1"),
        # The last of a duplicate key won silently.
        (YAML_SPEC + "n_trials: 500\n", "body", "line 9, column 1: duplicate key 'n_trials'"),
        (YAML_SPEC.replace("low: -1.0,", "low: -1.0, low: 0.5,"), "body", "'search_space.x.low'"),
        (YAML_SPEC + "---\nname: other\n", "body", "one document only"),
    ],
    ids=[
        "bool-for-int",
        "equal-choices",
        "nan",
        "unclosed",
        "alias",
        "python-tag",
        "deep",
        "base-60",
        "binary",
        "set",
        "date-key",
        "bytes-key",
        "int-key",
        "duplicate",
        "duplicate-nested",
        "two-documents",
    ],  # fmt: skip
)
def test_a_bad_yaml_spec_gets_the_error_json_would_and_writes_nothing(
    client: TestClient, settings: Settings, text: str, field: str, reason: str
) -> None:
    response = client.post(
        "/studies", content=text.encode(), headers={"content-type": "application/yaml"}
    )
    body = response.json()
    assert response.status_code == (400 if field == "body" else 422), body
    fields = {e["field"]: e["message"] for e in body["errors"]}
    assert reason in fields[field], body
    _nothing_written(settings)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"name": "a4", "task": "synthetic", "name": "a5"}', "duplicate key 'name'"),
        (b'{"name": "a4", "task": "synthetic", "task_args": {"x": 1, "x": 2}}', "key 'x'"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b'{"name": "a4", "task_args": ' + b"[" * 65 + b"]" * 65 + b"}", "nested too deeply"),
    ],
    ids=["duplicate", "duplicate-nested", "deep", "over-the-limit"],
)
def test_a_json_body_with_a_duplicate_key_or_deep_nesting_is_400_invalid_json(
    client: TestClient, settings: Settings, body: bytes, reason: str
) -> None:
    # The last of a duplicate key won silently; 5,000 levels got http_error.
    response = client.post("/studies", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_json"
    assert reason in response.json()["errors"][0]["message"]
    assert response.json()["errors"][0]["field"] == "body"
    _nothing_written(settings)


@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_a_body_not_sent_as_json_or_yaml_is_415_naming_the_type(
    client: TestClient, settings: Settings, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    body = b'{"name": "x", "task": "synthetic"}'
    response = client.post("/studies", content=body, headers=headers)
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    sent_as = f"'{content_type}'" if content_type else "no Content-Type"
    assert response.json()["detail"] == (
        "send the body as JSON with 'Content-Type: application/json' "
        f"(or YAML with 'application/yaml'; got {sent_as})"
    )
    _nothing_written(settings)
    sent = client.post("/studies", content=body, headers={"content-type": "application/json"})
    assert sent.status_code == 201


@pytest.mark.parametrize(
    "path", ["/studies/a%00b", "/studies/a%00b/trials", "/studies/a%00b/workers", "/studies/.x"]
)
def test_a_name_no_study_can_have_is_422_naming_it(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["name"]
    assert client.delete(path.removesuffix("/trials").removesuffix("/workers")).status_code == 422


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "offset=-1", "state=DONE"])
def test_bad_query_parameters_are_422(client: TestClient, query: str) -> None:
    client.post("/studies", json=synthetic("q"))
    path = "/studies/q/trials" if "state" in query else "/studies"
    response = client.get(f"{path}?{query}")
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] in ("limit", "offset", "state")


def test_synthetic_task_args_are_checked_against_their_ranges(client: TestClient) -> None:
    for args, field, reason in (
        ({"sleep_s": -1.0}, "task_args.sleep_s", "must be >= 0.0"),
        ({"batches_per_epoch": 0}, "task_args.batches_per_epoch", "must be >= 1"),
        ({"exit_code": 256}, "task_args.exit_code", "must be <= 255"),
        ({"epochs": True}, "task_args.epochs", "must be int"),
    ):
        response = client.post("/studies", json=synthetic("s", task_args=args))
        assert response.status_code == 422, args
        assert {e["field"]: e["message"] for e in response.json()["errors"]}[field].startswith(
            reason
        ), response.json()
    assert client.get("/studies/s").status_code == 404


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"n_trials": True}, "n_trials"),
        ({"n_trials": "30"}, "n_trials"),
        ({"workers": {"count": True}}, "workers.count"),
        ({"timeout_s": "60"}, "timeout_s"),
        ({"max_restarts": True}, "max_restarts"),
        ({"max_retries": -1}, "max_retries"),
        ({"n_trials": None}, "n_trials"),
        ({"workers": None}, "workers"),  # a 409 unreadable_spec: the stored spec had none
    ],
)
def test_patch_takes_strict_types(client: TestClient, patch: dict[str, Any], field: str) -> None:
    assert client.post("/studies", json=synthetic("p")).status_code == 201
    response = client.patch("/studies/p", json=patch)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
    spec = client.get("/studies/p").json()["spec"]
    assert (spec["n_trials"], spec["workers"]["count"], spec["timeout_s"]) == (20, 1, None)
    assert (spec["max_restarts"], spec["max_retries"]) == (3, 2)


def test_patch_changes_the_limits(client: TestClient) -> None:
    assert client.post("/studies", json=synthetic("p")).status_code == 201
    patch = {"max_restarts": 10, "max_failed_trials": None, "max_retries": 0, "n_trials": 30}
    response = client.patch("/studies/p", json=patch)
    assert response.status_code == 200, response.text
    spec = client.get("/studies/p").json()["spec"]
    assert {k: spec[k] for k in patch} == patch
    assert spec["workers"]["count"] == 1  # untouched fields stay


def test_enqueueing_into_a_finished_study_is_409(client: TestClient, settings: Settings) -> None:
    spec = synthetic("done", n_trials=1)
    assert client.post("/studies", json=spec).status_code == 201
    study = optuna.load_study(study_name="done", storage=optuna_storage(settings.database_url))
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.0, "y": 0},
            distributions={
                "x": optuna.distributions.FloatDistribution(-10, 10),
                "y": optuna.distributions.IntDistribution(-10, 10),
            },
            value=1.0,
        )
    )
    engine = make_engine(settings.database_url)
    with engine.begin() as conn:  # what the supervisor writes when the budget is spent
        conn.execute(update(StudyRow).values(status="finished"))
    engine.dispose()
    response = client.post("/studies/done/trials", json={"trials": [{"x": 1.0}]})
    assert response.status_code == 409
    assert "raise n_trials" in response.json()["detail"]
    assert client.get("/studies/done").json()["counts"]["WAITING"] == 0
    assert client.patch("/studies/done", json={"n_trials": 2}).json()["status"] == "running"
    assert client.post("/studies/done/trials", json={"trials": [{"x": 1.0}]}).status_code == 201


@pytest.fixture
def no_ddp_task() -> Iterator[str]:
    """A task whose model does not train on several ranks, registered for one test."""
    task = dataclasses.replace(get_task("synthetic"), name="no-ddp", supports_ddp=False)
    register_task(task)
    try:
        yield task.name
    finally:
        registry._TASKS.pop(task.name)


def test_several_ranks_for_a_task_without_ddp_is_422_and_writes_nothing(
    client: TestClient, settings: Settings, no_ddp_task: str
) -> None:
    spec = {**synthetic("ranks", workers={"count": 1, "ranks_per_trial": 2}), "task": no_ddp_task}
    response = client.post("/studies", json=spec)
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {
            "field": "workers.ranks_per_trial",
            "message": "task 'no-ddp' cannot train on several ranks (it does not support DDP); "
            "leave ranks_per_trial at 1",
        }
    ]
    _nothing_written(settings)
    one_rank = {**synthetic("ranks", workers={"count": 1, "ranks_per_trial": "auto"})}
    response = client.post("/studies", json={**one_rank, "task": no_ddp_task})
    assert response.status_code == 201, response.text  # auto on a CPU: one rank


def test_a_large_yaml_body_is_parsed_while_other_requests_are_answered(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 1 MiB YAML spec was parsed on the event loop: every request, /healthz included,
    # waited about 8 s. The parse is held open here until /healthz has answered.
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()
    real = security.yaml_to_json  # type: ignore[attr-defined]

    def held_open(text: str) -> str:
        entered.set()
        release.wait(10)
        returned.set()
        return real(text)

    monkeypatch.setattr(security, "yaml_to_json", held_open)
    text = YAML_SPEC + "# a long comment" * 5000 + "\n"  # 80 KiB
    assert len(text) > 64 * 1024  # over the size parsed inline
    created: list[int] = []
    post = threading.Thread(
        target=lambda: created.append(
            client.post(
                "/studies", content=text.encode(), headers={"content-type": "application/yaml"}
            ).status_code
        )
    )
    post.start()
    try:
        assert entered.wait(30), "the YAML body was never parsed"
        assert client.get("/healthz").status_code == 200
        assert not returned.is_set()  # answered while the parse was held open
    finally:
        release.set()
        post.join(60)
    assert created == [201]


@pytest.mark.parametrize(
    ("trial", "field", "reason"),
    [
        ({"kind": "bowl", "y": 0, "x": 1.0}, "trials.0.x", "not searched when kind in"),
        ({"kind": "shifted", "y": 0}, "trials.0.x", "searched when kind in ['shifted']: give"),
        ({"kind": "bowl", "y": 2}, "trials.0.z", "searched when y in {'min': 1}: give it"),
    ],
    ids=["inactive-given", "active-missing", "active-missing-by-range"],
)
def test_queueing_trials_checks_their_conditions_as_a_specs_enqueue_trials_does(
    client: TestClient, trial: dict[str, Any], field: str, reason: str
) -> None:
    # POST /studies/{name}/trials checked only names and ranges: a parameter its condition
    # leaves inactive was dropped silently.
    assert client.post("/studies", json=_conditional()).status_code == 201
    response = client.post("/studies/cond/trials", json={"trials": [{"y": 0}, trial]})
    assert response.status_code == 422, response.text
    errors = {e["field"]: e["message"] for e in response.json()["errors"]}
    field = field.replace("trials.0", "trials.1")
    assert reason in errors[field], errors
    assert client.get("/studies/cond").json()["counts"]["WAITING"] == 0  # nothing queued
    in_spec = client.post("/studies", json=_conditional([trial]) | {"name": "cond2"})
    assert in_spec.status_code == 422
    assert {e["field"] for e in in_spec.json()["errors"]} == {
        field.replace("trials.1", "enqueue_trials.0")
    }
    good = {"kind": "shifted", "y": 2, "x": 1.0, "z": 0.5}
    assert client.post("/studies/cond/trials", json={"trials": [good]}).status_code == 201


def test_queueing_trials_after_another_tool_deleted_the_optuna_study_is_404(
    client: TestClient, settings: Settings
) -> None:
    # A KeyError (500); PATCH and GET said 404.
    assert client.post("/studies", json=synthetic("yanked")).status_code == 201
    optuna.delete_study(study_name="yanked", storage=optuna_storage(settings.database_url))
    response = client.post("/studies/yanked/trials", json={"trials": [{"x": 1.0, "y": 0}]})
    assert response.status_code == 404, response.text
    assert "deleted outside the service" in response.json()["detail"]
