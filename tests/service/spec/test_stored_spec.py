"""A worker reads the stored spec leniently: fields a newer service added are ignored, and
what it cannot honour fails the study with the reason (no crash loop)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.settings import Settings
from service.spec.models import StudySpec, UnreadableSpecError
from service.storage.db import make_engine, make_session_factory, optuna_storage, session_scope
from service.storage.rows import StudyRow, WorkerRow
from tests.specs import synthetic
from tests.support import run_cli

pytestmark = pytest.mark.slow


def _run_a_worker(
    client: TestClient,
    settings: Settings,
    change: Callable[[dict[str, Any]], None],
    prelude: str = "",
) -> tuple[int, str]:
    """Create a study, change its stored spec as a newer service might have written it, run
    one real worker on it to its exit (after ``prelude``); its exit code and log."""
    spec = synthetic("newer", n_trials=2, epochs=1)
    assert client.post("/studies", json=spec).status_code == 201
    engine = make_engine(settings.database_url)
    try:
        with session_scope(make_session_factory(engine)) as session:
            row = session.scalar(select(StudyRow).where(StudyRow.name == "newer"))
            assert row is not None
            stored = copy.deepcopy(row.spec)
            change(stored)
            row.spec = stored
            worker = WorkerRow(launcher="local", host="here", state="running", log_path="")
            row.workers.append(worker)
            session.flush()
            worker_id = worker.id
    finally:
        engine.dispose()
    env = {
        "HELIOS_HPO_DATABASE_URL": settings.database_url,
        "HELIOS_HPO_DATA_DIR": str(settings.data_dir),
        "HELIOS_HPO_HEARTBEAT_INTERVAL_S": "1",
        "HELIOS_HPO_HEARTBEAT_GRACE_S": "4",
        "OMP_NUM_THREADS": "1",
    }
    done = run_cli(
        "worker", "--study", "newer", "--worker-id", str(worker_id), env=env, prelude=prelude
    )
    return done.returncode, done.stdout + done.stderr


def test_fields_a_newer_service_added_are_ignored(client: TestClient, settings: Settings) -> None:
    # Parsed with extra="forbid", such a spec made every worker crash at start, in a loop.
    def newer(spec: dict[str, Any]) -> None:
        spec["priority"] = "high"
        spec["workers"]["zone"] = "eu-1"
        spec["search_space"]["x"]["prior"] = "uniform"

    code, log = _run_a_worker(client, settings, newer)
    assert code == 0, log
    trials = optuna.load_study(
        study_name="newer", storage=optuna_storage(settings.database_url)
    ).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2


def test_a_spec_the_worker_cannot_honour_fails_the_study_with_the_reason(
    client: TestClient, settings: Settings
) -> None:
    def conditional(spec: dict[str, Any]) -> None:
        spec["search_space"]["x"] = {"type": "conditional", "when": {"y": 1}}

    code, log = _run_a_worker(client, settings, conditional)
    assert code == 0, log  # a clean exit: not a crash to restart
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            status, reason = conn.execute(
                select(StudyRow.status, StudyRow.status_reason).where(StudyRow.name == "newer")
            ).one()
    finally:
        engine.dispose()
    assert status == "failed", log
    assert reason is not None
    assert "search_space.x" in reason
    assert "run workers of the service's version" in reason
    # This service cannot read the spec either: a clear refusal, not a 500.
    response = client.get("/studies/newer")
    assert response.status_code == 409
    assert response.json()["code"] == "unreadable_spec"
    trials = optuna.load_study(
        study_name="newer", storage=optuna_storage(settings.database_url)
    ).trials
    assert trials == []


def test_a_stored_spec_is_read_in_one_place_leniently() -> None:
    stored = StudySpec(name="s", task="synthetic").model_dump(mode="json")
    assert StudySpec.from_stored({**stored, "later": 1}).name == "s"
    with pytest.raises(UnreadableSpecError, match="n_trials"):
        StudySpec.from_stored({**stored, "n_trials": "many"})


def test_a_stop_that_comes_while_the_worker_exits_is_not_a_traceback(
    client: TestClient, settings: Settings
) -> None:
    # The supervisor stops the workers of a study that ended; one may be exiting by then.
    stop_at_exit = (
        "import atexit, os, signal; atexit.register(lambda: os.kill(os.getpid(), signal.SIGTERM))"
    )
    code, log = _run_a_worker(client, settings, lambda spec: None, prelude=stop_at_exit)
    assert code == 0, log
    assert "budget of 2 trials spent" in log
    assert "Traceback" not in log
