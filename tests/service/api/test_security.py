"""Tokens, the body-size limit and the loopback rule: API, dashboard and command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from service.api import create_app
from service.api.dashboard import start_dashboard
from service.settings import Settings
from tests.specs import synthetic
from tests.support import free_port, run_serve

READ = "read-token-0123456789abcdef"
WRITE = "write-token-0123456789abcdef"
SPEC = synthetic("guarded")


@pytest.fixture
def guarded(settings: Settings) -> Iterator[TestClient]:
    secured = settings.model_copy(update={"api_tokens": [f"read:{READ}", f"write:{WRITE}"]})
    with TestClient(create_app(secured, supervise=False)) as client:
        yield client


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_without_a_token_only_healthz_answers(guarded: TestClient) -> None:
    assert guarded.get("/healthz").status_code == 200
    for path in ("/studies", "/tasks", "/docs", "/openapi.json", "/studies/guarded"):
        response = guarded.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["code"] == "unauthorized"
    assert guarded.post("/studies", json=SPEC).status_code == 401
    assert guarded.get("/studies", headers=_bearer("not-a-token")).status_code == 401


def test_read_tokens_read_and_write_tokens_write(guarded: TestClient) -> None:
    assert guarded.get("/studies", headers=_bearer(READ)).status_code == 200
    refused = guarded.post("/studies", json=SPEC, headers=_bearer(READ))
    assert refused.status_code == 403
    assert "read token" in refused.json()["detail"]
    assert guarded.get("/studies/guarded", headers=_bearer(WRITE)).status_code == 404  # unchanged
    assert guarded.post("/studies", json=SPEC, headers=_bearer(WRITE)).status_code == 201
    stop = guarded.post("/studies/guarded/stop", headers=_bearer(READ))
    assert stop.status_code == 403
    assert guarded.get("/studies/guarded", headers=_bearer(READ)).json()["status"] == "running"
    # HTTP basic auth with the token as password works too (what a browser sends).
    assert guarded.get("/studies", auth=("anyone", READ)).status_code == 200


def test_a_body_over_one_mib_is_refused_and_changes_nothing(client: TestClient) -> None:
    spec = {**SPEC, "task_args": {"padding": "x" * (1 << 20)}}
    response = client.post("/studies", json=spec)
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"

    def chunks() -> Iterator[bytes]:  # no content-length: counted as it arrives
        yield b'{"name": "guarded", "task": "synthetic", "task_args": {"p": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}}'

    chunked = client.post(
        "/studies", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413
    assert client.get("/studies/guarded").status_code == 404
    small = json.dumps({**SPEC, "task_args": {"epochs": 2}}).encode()
    headers = {"content-type": "application/json"}
    assert client.post("/studies", content=small, headers=headers).status_code == 201


def test_token_entries_are_checked_without_echoing_the_token(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text(f"# operators\nwrite:{WRITE}\n\nread:{READ}\n")
    settings = Settings(api_tokens=[], api_tokens_file=file)
    assert settings.tokens() == {WRITE: "write", READ: "read"}
    for bad in ("admin:0123456789abcdef0123", "write:short"):
        with pytest.raises(ValueError, match="'read:TOKEN' or 'write:TOKEN'") as info:
            Settings(api_tokens=[bad]).tokens()
        assert bad.partition(":")[2] not in str(info.value)


def test_serve_refuses_an_open_port_beyond_loopback_without_tokens(tmp_path: Path) -> None:
    result = run_serve(
        {"HELIOS_HPO_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"},
        "--host",
        "0.0.0.0",  # noqa: S104
        "--port",
        "1",
    )
    assert result.returncode == 2
    assert "HELIOS_HPO_API_TOKENS" in result.stderr
    assert "--insecure" in result.stderr
    assert not (tmp_path / "x.db").exists()  # refused before touching the database


def test_the_dashboard_asks_for_a_token_and_read_tokens_cannot_write(
    settings: Settings,
) -> None:
    port = free_port()
    server = start_dashboard(
        settings.database_url, "127.0.0.1", port, {READ: "read", WRITE: "write"}
    )
    try:
        url = f"http://127.0.0.1:{port}"
        anonymous = httpx.get(f"{url}/api/studies", timeout=10)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"].startswith("Basic")
        assert httpx.get(f"{url}/api/studies", auth=("", READ), timeout=10).status_code == 200
        body = {"study_name": "from-dashboard", "directions": ["minimize"]}
        created = httpx.post(f"{url}/api/studies", json=body, auth=("", READ), timeout=10)
        assert created.status_code == 403
        names = httpx.get(f"{url}/api/studies", headers=_bearer(WRITE), timeout=10).json()
        assert names["study_summaries"] == []
        created = httpx.post(f"{url}/api/studies", json=body, auth=("", WRITE), timeout=10)
        assert created.status_code == 201
    finally:
        server.shutdown()
        server.server_close()


def test_serve_says_when_its_token_file_cannot_be_read(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-tokens"
    result = run_serve(
        {
            "HELIOS_HPO_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}",
            "HELIOS_HPO_API_TOKENS_FILE": str(missing),
        },
        "--port",
        "1",
    )
    assert result.returncode == 2
    assert f"cannot read HELIOS_HPO_API_TOKENS_FILE {missing}" in result.stderr
    assert "Traceback" not in result.stderr
