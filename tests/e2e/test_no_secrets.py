"""Secrets never leave: the database password is not in responses, logs, worker argv or
errors; API tokens are not logged and do not reach the workers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.storage.db import normalize_url
from tests.databases import _postgres_database
from tests.e2e.harness import start_service, stop_service, wait_for, wait_for_status
from tests.specs import synthetic

PASSWORD = "pw-9f1c2e7a-never-shown"  # noqa: S105 (a sentinel to look for)
TOKEN = "tok-4d2b8e61-never-logged"  # noqa: S105
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def url_with_password() -> Iterator[str]:
    """A fresh PostgreSQL database, reached with a password (trust auth ignores it)."""
    for url in _postgres_database():
        yield normalize_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def test_the_database_password_never_leaves(url_with_password: str, tmp_path: Path) -> None:
    service = start_service(
        url_with_password,
        tmp_path / "data",
        tmp_path / "svc.log",
        {"HELIOS_HPO_API_TOKENS": f"write:{TOKEN}"},
    )
    seen: list[str] = []
    try:
        spec = synthetic(
            "secretive",
            n_trials=4,
            epochs=3,
            sleep_s=0.3,
        )
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=service.url, headers=headers, timeout=30) as client:
            seen.append(client.post("/studies", json=spec).text)

            def running_worker() -> dict[str, object] | None:
                workers = client.get("/studies/secretive/workers").json()
                return next((w for w in workers if w["state"] == "running"), None)

            worker = wait_for(running_worker, 30, "a running worker")
            argv = Path(f"/proc/{worker['pid']}/cmdline").read_bytes().replace(b"\0", b" ")
            seen.append(argv.decode())
            environ = Path(f"/proc/{worker['pid']}/environ").read_bytes()
            assert TOKEN.encode() not in environ  # the database URL is there, by design
            wait_for_status(client, "secretive", 120, service)
            for path in (
                "/studies",
                "/studies/secretive",
                "/studies/secretive/trials",
                "/studies/secretive/best",
                "/studies/secretive/workers",
                f"/workers/{worker['id']}/logs?tail=1000",
                "/tasks",
                "/openapi.json",
                "/studies/nope",  # 404
            ):
                seen.append(client.get(path).text)
            seen.append(client.post("/studies", json={**spec, "n_trials": 0}).text)  # 422
            seen.append(client.post("/studies", json=spec).text)  # 409
    finally:
        stop_service(service)
    seen.append(service.log())
    seen += [p.read_text() for p in (tmp_path / "data").rglob("*.log")]
    assert len(seen) > 14
    assert any("trial=" in text for text in seen)  # the worker logs were read
    leaks = [text[:200] for text in seen if PASSWORD in text]
    assert leaks == []
    logs = [service.log(), *(p.read_text() for p in (tmp_path / "data").rglob("*.log"))]
    assert not [text[:200] for text in logs if TOKEN in text]
