"""Schemathesis over the OpenAPI schema, through real HTTP, with and without a token:
no 5xx, and every response matches its documented schema."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from service.api import create_app
from service.settings import Settings
from tests.support import free_port, wait_for

pytestmark = pytest.mark.slow
TOKEN = "write-token-for-schemathesis-0123"  # noqa: S105 (a test token)
# Schemathesis's own list of statuses that reject invalid data, plus 413 (body too large).
REJECTIONS = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429"]


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    """The API with tokens on a free port (no supervisor: generated studies never train)."""
    secured = settings.model_copy(update={"api_tokens": [f"write:{TOKEN}"]})
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(secured, supervise=False), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: _healthy(url), 30, "the API to answer")
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.parametrize("token", [TOKEN, None], ids=["write-token", "no-token"])
def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    api_url: str, token: str | None, tmp_path: Path
) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli, "schemathesis is installed by the dev extra"
    # The schema itself needs a token: fetch it once, run against the live API.
    schema = tmp_path / "openapi.json"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    schema.write_bytes(httpx.get(f"{api_url}/openapi.json", headers=auth, timeout=10).content)
    # 413 rejects a body before validation reads it: an oversized invalid case is refused.
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f"[checks.negative_data_rejection]\nexpected-statuses = {json.dumps(REJECTIONS)}\n"
    )
    command = [
        cli,
        "--config-file",
        str(config),
        "run",
        str(schema),
        "--url",
        api_url,
        "--checks",
        "all",
        # A spec can be valid JSON Schema and still name an unknown task: that is a 422.
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "25",
        "--seed",
        "1",
        "--report-dir",
        str(tmp_path),
    ]
    if token:
        command += ["--header", f"Authorization: Bearer {token}"]
    else:
        # Without a token every request gets 401 before routing, undeclared methods too:
        # the guard does not tell callers which paths and methods exist.
        command[command.index("positive_data_acceptance")] += ",unsupported_method"
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    # A failing case's curl line can carry megabytes of body: shorten lines, keep them all.
    shown = "\n".join(line[:300] for line in output.splitlines())
    assert result.returncode == 0, shown[-20000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated, output[-2000:]
    assert int(generated.group(1)) > 200
