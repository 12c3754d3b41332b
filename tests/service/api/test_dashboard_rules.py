"""The dashboard deletes and renames studies of the service only as the service allows."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from typing import Any

import httpx
import optuna
import pytest
from fastapi.testclient import TestClient

from service.api.dashboard import start_dashboard
from service.artifacts.store import ModelStore, artifact_dir
from service.settings import Settings
from service.storage.db import optuna_storage
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


def test_a_method_in_lowercase_is_refused_not_routed_past_the_rules(
    client: TestClient, dashboard: httpx.Client, settings: Settings
) -> None:
    # `curl -X delete` deleted a running study (DELETE got the 409), `-X post` renamed it.
    assert client.post("/studies", json=synthetic("live")).status_code == 201
    study_id = _optuna_id(settings, "live")
    deleted = _raw(dashboard, "delete", f"/api/studies/{study_id}")  # httpx sends capitals
    assert deleted[0] == 501
    assert "HTTP methods are case-sensitive (DELETE?)" in deleted[1]["reason"]
    renamed = _raw(dashboard, "post", f"/api/studies/{study_id}/rename", {"study_name": "x"})
    assert renamed[0] == 501
    assert client.get("/studies/live").json()["status"] == "running"
    assert optuna.get_all_study_names(optuna_storage(settings.database_url)) == ["live"]


def _raw(
    dashboard: httpx.Client, method: str, path: str, body: dict[str, str] | None = None
) -> tuple[int, Any]:
    """A request whose method is sent as written."""
    connection = http.client.HTTPConnection(dashboard.base_url.host, dashboard.base_url.port)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=payload)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _uploaded(dashboard: httpx.Client, path: str, content: bytes) -> str:
    data = "data:application/octet-stream;base64," + base64.b64encode(content).decode()
    response = dashboard.post(path, json={"file": data, "filename": "notes.bin"})
    assert response.status_code == 201, response.text
    return str(response.json()["artifact_id"])


def test_a_removed_model_is_a_404_with_the_reason_and_uploads_go_with_their_study(
    client: TestClient, dashboard: httpx.Client, settings: Settings
) -> None:
    assert client.post("/studies", json=synthetic("kept")).status_code == 201
    storage = optuna_storage(settings.database_url)
    study = optuna.load_study(study_name="kept", storage=storage)
    trial = study.ask({"x": optuna.distributions.FloatDistribution(-10, 10)})
    study_id = _optuna_id(settings, "kept")
    models = ModelStore(folder=artifact_dir(settings.data_dir))
    model = _uploaded(dashboard, f"/api/artifacts/{study_id}/{trial._trial_id}", b"weights")
    study.tell(trial, 1.0)
    url = f"/artifacts/{study_id}/{trial._trial_id}/{model}"
    assert dashboard.get(url).content == b"weights"
    models.remove(model)  # as retention or the budget removes it
    gone = dashboard.get(url)  # an HTML 500
    assert gone.status_code == 404
    assert gone.json()["reason"].startswith(f"artifact {model} was deleted")
    # A file uploaded to the study survived DELETE /studies and counted toward the budget.
    notes = _uploaded(dashboard, f"/api/artifacts/{study_id}", b"notes")
    assert models.size(notes) == len(b"notes")
    assert client.post("/studies/kept/stop").status_code == 200
    assert client.delete("/studies/kept").status_code == 204
    assert models.size(notes) is None
