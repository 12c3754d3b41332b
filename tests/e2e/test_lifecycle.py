"""A study's life with real workers: crashes, kills mid-training, resume, stop and limits."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
from sqlalchemy import select

from service.storage.db import make_engine, optuna_storage
from service.storage.optuna_writes import add_trials
from service.storage.rows import LIVE_STATES as LIVE
from service.storage.rows import StudyRow, WorkerRow
from tests.e2e.harness import (
    Service,
    start_service,
    stop_service,
    study_summary,
    wait_for,
    wait_for_status,
)
from tests.specs import synthetic

pytestmark = pytest.mark.slow


def _workers(client: Any, name: str) -> list[dict[str, Any]]:
    workers: list[dict[str, Any]] = client.get(f"/studies/{name}/workers").json()
    return workers


def _state(client: Any, name: str, worker_id: int) -> str:
    return next(str(w["state"]) for w in _workers(client, name) if w["id"] == worker_id)


def _trained(svc: Service, worker_id: int) -> bool:
    """Whether the worker sent a heartbeat for a trial (it is training)."""
    engine = make_engine(svc.database_url)
    try:
        with engine.connect() as conn:
            trained = conn.scalar(select(WorkerRow.trials_trained).where(WorkerRow.id == worker_id))
    finally:
        engine.dispose()
    return bool(trained)


def test_workers_killed_while_training_are_not_a_crash_loop(service: Service) -> None:
    spec = synthetic(
        "killed",
        n_trials=2,
        epochs=20,  # ~3 s a trial
        sleep_s=0.15,
        max_restarts=1,
        max_retries=5,
    )
    killed: list[int] = []
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        for _ in range(3):  # more kills than max_restarts allows crashes

            def training() -> dict[str, Any] | None:
                for w in _workers(client, "killed"):
                    if w["state"] == "running" and w["id"] not in killed:
                        return w if _trained(service, w["id"]) else None
                return None

            victim = wait_for(training, 60, "a worker in training")
            os.kill(victim["pid"], signal.SIGKILL)
            killed.append(victim["id"])
            wait_for(
                lambda: _state(client, "killed", killed[-1]) not in LIVE,
                30,
                "the killed worker to be reaped",
            )
            assert study_summary(client, "killed")["status"] == "running"
        study = wait_for_status(client, "killed", 180, service)
    assert study["status"] == "finished", study["status_reason"]
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 2


def test_resume_after_max_restarts_starts_workers_and_patch_raises_the_limit(
    service: Service,
) -> None:
    spec = synthetic(
        "again",
        n_trials=3,
        exit_code=3,  # each worker dies in its first batch
        max_restarts=0,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "again", 60, service)
        assert study["status"] == "failed"
        assert "1 workers in a row failed before training a trial" in study["status_reason"]
        assert len(_workers(client, "again")) == 1

        assert client.post("/studies/again/resume").status_code == 200
        study = wait_for_status(client, "again", 60, service)
        assert study["status"] == "failed"
        assert len(_workers(client, "again")) == 2  # the resume started a worker

        patched = client.patch("/studies/again", json={"max_restarts": 2})
        assert patched.json()["spec"]["max_restarts"] == 2
        assert client.post("/studies/again/resume").status_code == 200
        study = wait_for_status(client, "again", 90, service)
        assert "3 workers in a row failed before training a trial" in study["status_reason"]
        assert len(_workers(client, "again")) == 5


def test_max_failed_trials_ends_the_study_when_the_limit_is_passed(service: Service) -> None:
    spec = synthetic(
        "failing",
        n_trials=200,
        fail=True,
        max_retries=0,
        max_failed_trials=3,
        workers=2,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "failing", 90, service)
        wait_for(
            lambda: all(w["state"] not in LIVE for w in _workers(client, "failing")),
            30,
            "the workers to exit",
        )
        study = study_summary(client, "failing")
    assert study["status"] == "failed"
    assert "(max_failed_trials=3)" in study["status_reason"]
    # The fourth failure ends it; a second worker may be in one more trial by then.
    assert 4 <= study["counts"]["FAIL"] <= 5, study["counts"]
    assert study["counts"]["RUNNING"] == 0


def test_stopping_a_study_leaves_no_retry_of_its_trial(service: Service) -> None:
    spec = synthetic(
        "halt",
        n_trials=3,
        epochs=40,  # ~8 s a trial
        sleep_s=0.2,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(
            lambda: study_summary(client, "halt")["counts"]["RUNNING"] == 1, 60, "a running trial"
        )
        assert client.post("/studies/halt/stop").status_code == 200
        wait_for(
            lambda: all(w["state"] not in LIVE for w in _workers(client, "halt")),
            30,
            "the worker to stop",
        )
        counts = study_summary(client, "halt")["counts"]
    assert counts["FAIL"] == 1
    assert counts["WAITING"] == 0
    assert counts["RUNNING"] == 0


def test_an_optuna_study_deleted_outside_ends_the_study_and_its_workers_cleanly(
    service: Service,
) -> None:
    spec = synthetic(
        "yanked",
        n_trials=500,  # not spent before the delete lands
        epochs=3,
        sleep_s=0.1,
        workers=2,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        wait_for(
            lambda: study_summary(client, "yanked")["counts"]["COMPLETE"] >= 2, 60, "two trials"
        )
        storage = optuna_storage(service.database_url)
        # Optuna's delete_study ignores an IntegrityError: on PostgreSQL a trial created
        # meanwhile makes it silently delete nothing. Delete until it is gone.
        wait_for(
            lambda: (
                optuna.delete_study(study_name="yanked", storage=storage)
                if "yanked" in optuna.get_all_study_names(storage)
                else True
            ),
            30,
            "the Optuna study to be deleted",
        )
        wait_for(
            lambda: all(w["state"] not in LIVE for w in _workers(client, "yanked")),
            30,
            "the workers to end",
        )
        workers = _workers(client, "yanked")
        study = client.get("/studies").json()["items"][0]
        assert study["name"] == "yanked"
        assert study["status"] == "failed"
        assert "deleted or renamed outside the service" in _reason(service, "yanked")
    assert len(workers) == 2  # none restarted
    assert {w["state"] for w in workers} <= {"exited", "stopped"}, workers
    assert "Traceback" not in "".join(p.read_text() for p in service.data_dir.rglob("worker-*.log"))


def _reason(svc: Service, name: str) -> str:
    engine = make_engine(svc.database_url)
    try:
        with engine.connect() as conn:
            reason = conn.scalar(select(StudyRow.status_reason).where(StudyRow.name == name))
    finally:
        engine.dispose()
    return str(reason)


def test_a_service_killed_while_creating_a_study_leaves_nothing_half_made(
    service: Service, tmp_path: Path
) -> None:
    # A warm start from 20,000 trials: reading them takes long enough to kill the service
    # between the Optuna study's creation and the commit of its trials.
    storage = optuna_storage(service.database_url)
    with service.client() as client:
        assert client.post("/studies", json=synthetic("source", n_trials=1)).status_code == 201
        _add_complete_trials(service.database_url, storage, "source", 20_000)
        spec = synthetic("half", warm_start={"from_study": "source"})
        sent = threading.Thread(
            target=lambda: _post_ignoring_errors(service.url, spec), daemon=True
        )
        sent.start()
        wait_for(lambda: "half" in optuna.get_all_study_names(storage), 60, "the Optuna study")
        os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait()
        sent.join(timeout=30)
    storage.remove_session()

    second = start_service(service.database_url, service.data_dir, tmp_path / "second.log", {})
    try:
        with second.client() as client:
            # Recovered before the API answers its first request (the supervisor's first tick
            # did it while the API answered already), and all of it: no copied trial stays.
            assert "half" not in optuna.get_all_study_names(optuna_storage(second.database_url))
            assert client.get("/studies/half").status_code == 404
            small = synthetic("half", n_trials=1)
            assert client.post("/studies", json=small).status_code == 201
            assert wait_for_status(client, "half", 60, second)["status"] == "finished"
    finally:
        stop_service(second)


def _add_complete_trials(
    database_url: str, storage: optuna.storages.RDBStorage, name: str, n: int
) -> None:
    space = {
        "x": optuna.distributions.FloatDistribution(-10, 10),
        "y": optuna.distributions.IntDistribution(-10, 10),
    }
    trials = [
        optuna.trial.create_trial(
            params={"x": i % 20 - 10.0, "y": i % 21 - 10}, distributions=space, value=i
        )
        for i in range(n)
    ]
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            add_trials(conn, storage.get_study_id_from_name(name), trials)
    finally:
        engine.dispose()


def _post_ignoring_errors(url: str, spec: dict[str, Any]) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the service is killed while it answers
        httpx.post(f"{url}/studies", json=spec, timeout=120)
