"""The dashboard deletes and renames studies of the service only as the service allows."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import optuna
import pytest
from fastapi.testclient import TestClient

from service.dashboard import start_dashboard
from service.db import optuna_storage
from service.settings import Settings
from tests.specs import synthetic
from tests.support import free_port


@pytest.fixture
def dashboard(settings: Settings) -> Iterator[httpx.Client]:
    port = free_port()
    server = start_dashboard(settings.database_url, "127.0.0.1", port, None, settings.data_dir)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        server.shutdown()
        server.server_close()


def _optuna_id(settings: Settings, name: str) -> int:
    return optuna_storage(settings.database_url).get_study_id_from_name(name)


def test_a_running_study_cannot_be_deleted_or_renamed_from_the_dashboard(
    client: TestClient, dashboard: httpx.Client, settings: Settings
) -> None:
    assert client.post("/studies", json=synthetic("live")).status_code == 201
    study_id = _optuna_id(settings, "live")

    refused = dashboard.delete(f"/api/studies/{study_id}")
    assert refused.status_code == 409
    assert "is running; stop or pause it before deleting it" in refused.json()["reason"]
    renamed = dashboard.post(f"/api/studies/{study_id}/rename", json={"study_name": "other"})
    assert renamed.status_code == 409
    assert "cannot be renamed" in renamed.json()["reason"]
    assert client.get("/studies/live").json()["status"] == "running"
    names = optuna.get_all_study_names(optuna_storage(settings.database_url))
    assert names == ["live"]

    # Stopped (and no live worker): the dashboard deletes it as the API would, row and all.
    assert client.post("/studies/live/stop").status_code == 200
    assert dashboard.delete(f"/api/studies/{study_id}").status_code == 204
    assert client.get("/studies/live").status_code == 404
    assert optuna.get_all_study_names(optuna_storage(settings.database_url)) == []
    assert client.post("/studies", json=synthetic("live")).status_code == 201


def test_studies_of_other_tools_are_the_dashboards_to_delete(
    dashboard: httpx.Client, settings: Settings
) -> None:
    optuna.create_study(study_name="theirs", storage=optuna_storage(settings.database_url))
    study_id = _optuna_id(settings, "theirs")
    renamed = dashboard.post(f"/api/studies/{study_id}/rename", json={"study_name": "mine"})
    assert renamed.status_code == 201
    new_id = _optuna_id(settings, "mine")
    assert dashboard.delete(f"/api/studies/{new_id}").status_code == 204
    assert optuna.get_all_study_names(optuna_storage(settings.database_url)) == []


def test_an_optuna_study_without_our_row_can_be_deleted_through_the_api(
    client: TestClient, settings: Settings
) -> None:
    optuna.create_study(study_name="orphan", storage=optuna_storage(settings.database_url))
    taken = client.post("/studies", json=synthetic("orphan"))
    assert taken.status_code == 409
    assert "DELETE /studies/orphan" in taken.json()["detail"]
    assert client.delete("/studies/orphan").status_code == 204
    assert optuna.get_all_study_names(optuna_storage(settings.database_url)) == []
    assert client.post("/studies", json=synthetic("orphan")).status_code == 201
    assert client.delete("/studies/never-was").status_code == 404
