"""A user's path: submit over HTTP, workers train, the study finishes, Optuna sees it."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from service.storage.db import optuna_storage
from service.tasks.registry import get_task
from tests.databases import sqlite_only
from tests.e2e.harness import (
    Service,
    kill_workers,
    optuna_trials,
    start_service,
    stop_service,
    wait_for,
    wait_for_status,
)
from tests.specs import synthetic

pytestmark = pytest.mark.slow

DIGITS = {
    "name": "digits-e2e",
    "task": "digits",
    "objectives": [{"metric": "accuracy", "direction": "maximize"}],
    "search_space": {
        "lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True},
        "hidden": {"type": "int", "low": 32, "high": 256, "step": 32},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "batch_size": {"type": "categorical", "choices": [32, 64]},
    },
    "sampler": {"name": "TPESampler", "args": {"seed": 1}},
    "pruner": {"name": "MedianPruner", "args": {"n_startup_trials": 3}},
    "n_trials": 12,
    "task_args": {"epochs": 8},
    "enqueue_trials": [{"lr": 0.01, "hidden": 128, "optimizer": "adam", "batch_size": 32}],
    "workers": {"count": 2},
}


def test_digits_study_trains_to_the_end(service: Service) -> None:
    with service.client() as client:
        created = client.post("/studies", json=DIGITS)
        assert created.status_code == 201, created.text
        study = wait_for_status(client, "digits-e2e", 300, service)
        trials = client.get("/studies/digits-e2e/trials?limit=1000").json()

    assert study["status"] == "finished", study
    counts = study["counts"]
    assert counts["COMPLETE"] + counts["PRUNED"] == 12
    assert counts["RUNNING"] == 0
    assert counts["WAITING"] == 0
    assert study["best_value"] >= 0.9
    assert len(study["workers"]) == 2
    worker_logs = sorted(service.data_dir.rglob("worker-*.log"))
    assert len(worker_logs) == 2
    assert any("trial=0 " in p.read_text() for p in worker_logs)  # lines findable by trial

    loaded = optuna.load_study(
        study_name="digits-e2e", storage=optuna_storage(service.database_url)
    )
    assert [(t.number, t.state.name) for t in loaded.trials] == [
        (t["number"], t["state"]) for t in trials["items"]
    ]
    assert loaded.best_value == pytest.approx(study["best_value"])
    assert loaded.trials[0].params["lr"] == 0.01  # the enqueued warm start ran first


def test_budget_is_exact_with_many_workers(service: Service) -> None:
    spec = synthetic(
        "budget",
        n_trials=15,
        epochs=3,
        sleep_s=0.02,
        workers=4,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "budget", 180, service)
        assert study["status"] == "finished", study
        counts = study["counts"]
        assert counts["COMPLETE"] + counts["PRUNED"] == 15
        assert sum(counts.values()) == 15  # not one trial more
        # Workers exit by themselves once the budget is spent.
        wait_for(
            lambda: all(
                w["state"] == "exited" for w in client.get("/studies/budget").json()["workers"]
            ),
            60,
            "the workers to exit",
        )


def test_stop_ends_training_now_and_leaves_nothing_running(service: Service) -> None:
    spec = synthetic(
        "slow",
        n_trials=50,
        epochs=20,
        sleep_s=0.5,
        workers=2,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(
            lambda: client.get("/studies/slow").json()["counts"]["RUNNING"] == 2,
            60,
            "two trials to run",
        )
        stopped = client.post("/studies/slow/stop")
        assert stopped.status_code == 200
        assert stopped.json()["status"] == "stopped"

        def settled() -> bool:
            study = client.get("/studies/slow").json()
            return study["counts"]["RUNNING"] == 0 and all(
                w["state"] == "stopped" for w in study["workers"]
            )

        wait_for(settled, 60, "workers to stop and no trial to be RUNNING")
        study = client.get("/studies/slow").json()
    assert study["counts"]["FAIL"] == 2
    assert study["counts"]["COMPLETE"] == 0


@sqlite_only
def test_cli_submit_waits_with_progress(service: Service, tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(synthetic("cli", n_trials=5, epochs=2)))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "service.cli",
            "submit",
            str(spec_path),
            "--wait",
            "--url",
            service.url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "created study 'cli': 5 trials, 1 workers" in proc.stdout
    assert "study 'cli' finished" in proc.stdout
    assert "5/5" in proc.stderr  # the progress bar's last state

    listing = subprocess.run(
        [sys.executable, "-m", "service.cli", "studies", "--url", service.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert listing.stdout.split()[:3] == ["cli", "synthetic", "finished"]

    one = subprocess.run(
        [sys.executable, "-m", "service.cli", "studies", "cli", "--url", service.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    shown = json.loads(one.stdout)
    assert (
        shown["name"],
        shown["status"],
        shown["counts"]["COMPLETE"] + shown["counts"]["PRUNED"],
    ) == (
        "cli",
        "finished",
        5,
    )

    again = subprocess.run(
        [sys.executable, "-m", "service.cli", "submit", str(spec_path), "--url", service.url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert again.returncode == 2  # a user's error
    assert "409 a study named 'cli' exists" in again.stderr

    # A YAML spec with a conditional parameter, a constraint and a warm start from 'cli':
    # the progress bar counts the study's own trials, not the copies.
    warm = tmp_path / "warm.yaml"
    warm.write_text(
        "name: cli-warm\ntask: synthetic\nn_trials: 2\ntask_args: {epochs: 2}\n"
        "search_space:\n"
        "  y: {type: int, low: -10, high: 10}\n"
        "  x: {type: float, low: -10.0, high: 10.0, when: {y: {min: -10}}}\n"
        "constraints: [{metric: cost, max: 100.0}]\n"
        "warm_start: {from_study: cli}\n"
    )
    warmed = subprocess.run(
        [sys.executable, "-m", "service.cli", "submit", str(warm), "--wait", "--url", service.url],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert warmed.returncode == 0, warmed.stdout + warmed.stderr
    assert "study 'cli-warm' finished" in warmed.stdout
    assert "2/2" in warmed.stderr


def _readme_spec() -> dict[str, object]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    body = readme.split("-d '", 1)[1].split("'\n", 1)[0]
    spec: dict[str, object] = json.loads(body)
    return spec


@sqlite_only
def test_the_readme_quickstart_study_trains(service: Service) -> None:
    spec = _readme_spec()
    assert spec["name"] == "digits-demo"
    spec["n_trials"] = 6  # the README's 20 take longer than a test should
    with service.client() as client:
        created = client.post("/studies", json=spec)
        assert created.status_code == 201, created.text
        study = wait_for_status(client, "digits-demo", 300, service)
    assert study["status"] == "finished", study
    assert study["counts"]["FAIL"] == 0
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 6
    assert study["best_value"] >= 0.9


@sqlite_only
def test_the_readme_python_client_example_runs(service: Service) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    code = readme.split(".venv/bin/python - <<'PY'\n", 1)[1].split("PY\n", 1)[0]
    assert '"n_trials": 8' in code
    code = code.replace("http://127.0.0.1:8000", service.url).replace(
        '"n_trials": 8', '"n_trials": 3'
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("finished {")
    assert "'lr': " in lines[0]
    assert "3/3" in done.stderr  # the progress bar
    assert len([line for line in lines if " trial=" in line]) == 3  # the worker's last lines


@sqlite_only
def test_the_downloaded_best_model_scores_what_its_trial_reported(
    service: Service, tmp_path: Path
) -> None:
    spec = {**DIGITS, "name": "digits-model", "n_trials": 3, "task_args": {"epochs": 3}}
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "digits-model", 300, service)
    assert study["status"] == "finished", study["status_reason"]
    output = tmp_path / "best.pt"
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "model", "digits-model", "-o", str(output),
         "--url", service.url],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"saved the model of trial {study['best_trial']} of study 'digits-model'" in done.stdout
    assert "get_task('digits').load_model(" in done.stdout

    run = get_task("digits").load_model(output)
    run.datamodule.setup()
    valid = run.datamodule.valid_dataset
    assert isinstance(valid, torch.utils.data.TensorDataset)
    x, y = valid.tensors
    with torch.no_grad():
        accuracy = int((run.model.modules()["net"](x).argmax(dim=1) == y).sum()) / len(y)
    assert accuracy == study["best_value"]
    assert run.model.metrics["accuracy"] == study["best_value"]
    with pytest.raises(ValueError, match="holds a model of task 'digits', not 'synthetic'"):
        get_task("synthetic").load_model(output)


@sqlite_only
def test_one_worker_starts_first_and_the_rest_once_a_trial_runs(service: Service) -> None:
    """Workers starting together share the host's cores; the first trial must not wait
    for all of them to start."""
    spec = synthetic(
        "ramp",
        n_trials=40,
        epochs=3,
        sleep_s=0.05,
        workers=4,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(lambda: len(client.get("/studies/ramp/workers").json()) == 4, 120, "4 workers")
        workers = client.get("/studies/ramp/workers").json()
        client.post("/studies/ramp/stop").raise_for_status()
    started = sorted(dt.datetime.fromisoformat(w["started_at"]) for w in workers)
    # Optuna stamps trials with the worker's local naive time.
    first_trial = min(
        t.datetime_start.astimezone(dt.UTC)
        for t in optuna_trials(service, "ramp")
        if t.datetime_start is not None
    )
    assert started[0] < first_trial < started[1]


@sqlite_only
def test_a_conditional_study_searches_exactly_the_active_parameters(service: Service) -> None:
    space = {
        "kind": {"type": "categorical", "choices": ["bowl", "shifted"]},
        "y": {"type": "int", "low": -3, "high": 3},
        "x": {"type": "float", "low": -5.0, "high": 5.0, "when": {"kind": ["shifted"]}},
        "z": {"type": "float", "low": -1.0, "high": 1.0, "when": {"y": {"min": 1}}},
    }
    first = {"kind": "shifted", "y": 2, "x": 1.5, "z": 0.5}
    spec = synthetic(
        "branches", search_space=space, n_trials=30, epochs=1, workers=2, enqueue_trials=[first]
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "branches", 240, service)
    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 30
    trials = [t for t in optuna_trials(service, "branches") if t.state.name != "FAIL"]
    assert trials[0].params == first  # enqueued, every active parameter given
    for trial in trials:
        active = {"kind", "y"}
        active |= {"x"} if trial.params["kind"] == "shifted" else set()
        active |= {"z"} if trial.params["y"] >= 1 else set()
        assert set(trial.params) == active, (trial.number, trial.params)
        assert set(trial.distributions) == active
    # Both branches of both conditions were taken.
    assert {"x" in t.params for t in trials} == {True, False}
    assert {"z" in t.params for t in trials} == {True, False}


def test_the_best_trial_is_the_best_feasible_one(service: Service) -> None:
    # cost = x**2 <= 1: x = 2 has the lowest loss but breaks it; x = 0.9 is the best within.
    enqueued = [{"x": 2.0, "y": 3}, {"x": 0.9, "y": 3}, {"x": -3.0, "y": 3}, {"x": 0.1, "y": 3}]
    spec = synthetic(
        "bounded", n_trials=4, epochs=2, enqueue_trials=enqueued,
        constraints=[{"metric": "cost", "max": 1.0}], pruner={"name": "NopPruner"},
    )  # fmt: skip
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "bounded", 120, service)
        best = client.get("/studies/bounded/best").json()["trials"]
    trials = {t.params["x"]: t for t in optuna_trials(service, "bounded")}
    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["COMPLETE"] == 4
    assert study["counts"]["INFEASIBLE"] == 2  # x = 2 and x = -3
    assert trials[2.0].value < trials[0.9].value  # a better trial exists, infeasible
    assert trials[2.0].constraints == {"cost.max": pytest.approx(3.0)}  # what Optuna reads
    assert study["best_trial"] == trials[0.9].number
    assert study["best_value"] == pytest.approx(trials[0.9].value)
    assert [t["number"] for t in best] == [trials[0.9].number]


def test_the_pareto_front_holds_only_feasible_trials(service: Service) -> None:
    # Minimize loss and cost; loss <= 3 leaves out x = 0, which no other trial dominates.
    enqueued = [{"x": 2.0, "y": 3}, {"x": 1.0, "y": 3}, {"x": 0.0, "y": 3}]
    spec = synthetic(
        "front", n_trials=3, epochs=2, enqueue_trials=enqueued,
        objectives=[{"metric": "loss", "direction": "minimize"},
                    {"metric": "cost", "direction": "minimize"}],
        constraints=[{"metric": "loss", "max": 3.0}],
    )  # fmt: skip
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "front", 120, service)
        front = client.get("/studies/front/best").json()["trials"]
    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["INFEASIBLE"] == 1
    assert sorted(t["params"]["x"] for t in front) == [1.0, 2.0]


def test_a_warm_started_study_copies_the_best_earlier_trials_outside_its_budget(
    service: Service,
) -> None:
    xs = [0.5, 1.0, 1.5, 2.5, 7.0, -8.0]
    first = synthetic(
        "first", n_trials=6, epochs=3, workers=2, pruner={"name": "NopPruner"},
        enqueue_trials=[{"x": x, "y": 3} for x in xs],
    )  # fmt: skip
    # x in [-5, 5] here: earlier trials with x outside are skipped, and said so.
    space = {
        "x": {"type": "float", "low": -5.0, "high": 5.0},
        "y": {"type": "int", "low": -10, "high": 10},
    }
    second = synthetic(
        "second", n_trials=3, epochs=3, search_space=space,
        warm_start={"from_study": "first", "trials": "complete", "limit": 3},
    )  # fmt: skip
    with service.client() as client:
        assert client.post("/studies", json=first).status_code == 201
        assert wait_for_status(client, "first", 120, service)["status"] == "finished"
        created = client.post("/studies", json=second)
        assert created.status_code == 201, created.text
        study = wait_for_status(client, "second", 120, service)
    earlier = {t.params["x"]: t for t in optuna_trials(service, "first")}
    # loss = (x - 2)**2 + ...: 2.5 and 1.5 tie (the earlier first), then 1.0; 7 and -8 are out.
    best_three = [earlier[1.5], earlier[2.5], earlier[1.0]]
    best_three.sort(key=lambda t: t.number if t.value == earlier[1.5].value else 10**6)
    trials = optuna_trials(service, "second")
    copies = [t for t in trials if "helios_hpo:warm_start" in t.system_attrs]

    assert created.json()["warm_started"] == 3
    assert study["warm_started"] == 3
    assert study["warm_start_skipped"] == {"x: outside its range here": 2}
    assert [(t.params, t.value, t.intermediate_values) for t in copies] == [
        (t.params, t.value, t.intermediate_values) for t in best_three
    ]
    # The copies spend none of the budget: 3 trials of its own ran.
    assert study["status"] == "finished", study["status_reason"]
    assert len(trials) - len(copies) == 3
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 6


@sqlite_only
def test_workers_start_from_a_folder_with_a_service_package_of_its_own(
    database_url: str, tmp_path: Path
) -> None:
    # Workers ran `python -m service.cli` in the service's folder: from a Django or Flask
    # repository (a service.py or service/ of its own) every worker died at import.
    project = tmp_path / "webapp"
    (project / "service").mkdir(parents=True)
    shadow = "raise ImportError('the web app service, not helios-hpo')\n"
    (project / "service" / "__init__.py").write_text(shadow)
    (project / "service.py").write_text(shadow)
    svc = start_service(database_url, tmp_path / "data", tmp_path / "service.log", {}, cwd=project)
    try:
        with svc.client() as client:
            spec = synthetic("shadowed", n_trials=2, epochs=2, workers=1)
            assert client.post("/studies", json=spec).status_code == 201
            study = wait_for_status(client, "shadowed", 120, svc)
            workers = wait_for(
                lambda: [
                    w
                    for w in client.get("/studies/shadowed/workers").json()
                    if w["state"] != "running"
                ],
                60,
                "the worker to exit",
            )
        assert study["status"] == "finished", study["status_reason"]
        assert [(w["state"], w["exit_code"]) for w in workers] == [("exited", 0)]
    finally:
        stop_service(svc)
        kill_workers(database_url)
