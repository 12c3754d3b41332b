"""The service's log never holds a token, even one a client put in a query string."""

from __future__ import annotations

import httpx
import pytest

from tests.databases import sqlite_only
from tests.e2e.harness import Service

TOKEN = "tok-8c4e1f09-never-logged"  # noqa: S105 (a sentinel to look for)
SENT = "sent-6a2d93b7-in-a-query"


@pytest.fixture
def service_env() -> dict[str, str]:
    return {"HELIOS_HPO_API_TOKENS": f"write:{TOKEN}"}


@sqlite_only
def test_tokens_in_query_strings_and_headers_stay_out_of_the_log(service: Service) -> None:
    queries = (
        f"token={SENT}",
        f"limit=5&access_token={SENT}",
        f"api_key={SENT}&offset=0",
        f"apiKey={SENT}",
        f"X-Auth={SENT}",
        f"password={SENT}",
    )
    for query in queries:
        assert httpx.get(f"{service.url}/studies?{query}", timeout=10).status_code == 401
    headers = {"Authorization": f"Bearer {TOKEN}"}
    answered = httpx.get(f"{service.url}/studies?limit=5&token={SENT}", headers=headers, timeout=10)
    assert answered.status_code == 200
    log = service.log()
    assert "GET /studies?token=*** HTTP/1.1" in log  # the access log is on, scrubbed
    assert "GET /studies?limit=5&access_token=*** HTTP/1.1" in log
    assert SENT not in log
    assert TOKEN not in log
