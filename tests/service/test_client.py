"""service.client.Client against the real service over HTTP: every method, tokens, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.api import create_app
from service.client import Client, ServiceError
from service.settings import Settings
from tests.specs import synthetic
from tests.support import free_port, serving, wait_for

READ = "read-token-0123456789abcdef"
WRITE = "write-token-0123456789abcdef"


@pytest.fixture
def service_url(settings: Settings) -> Iterator[str]:
    """The service with its supervisor (local workers train) and a read and a write token."""
    secured = settings.model_copy(update={"api_tokens": [f"read:{READ}", f"write:{WRITE}"]})
    with serving(create_app(secured)) as url:
        yield url


def test_a_study_from_submission_to_deletion_through_every_method(
    service_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with Client(service_url, WRITE) as client:
        assert "synthetic" in [task["name"] for task in client.tasks()]
        spec = synthetic("demo", n_trials=4, workers=1, epochs=2, sleep_s=0.01)
        created = client.create_study(spec)
        assert (created["name"], created["n_trials"]) == ("demo", 4)
        client.patch("demo", n_trials=5)
        assert client.study("demo")["n_trials"] == 5
        queued = client.enqueue("demo", {"x": 0.5, "y": 3})
        assert queued["counts"]["WAITING"] >= 1

        study = client.wait("demo", progress=True, timeout_s=120, interval_s=0.2)
        assert study["status"] == "finished", study["status_reason"]
        bar = capsys.readouterr().err
        assert "demo" in bar
        assert "5/5" in bar

        trials = list(client.trials("demo", page_size=2))  # three pages
        assert [t["number"] for t in trials] == [0, 1, 2, 3, 4]
        assert {"x": 0.5, "y": 3} in [t["params"] for t in trials]
        done = list(client.trials("demo", state="COMPLETE", page_size=2))
        assert done
        assert {t["state"] for t in done} == {"COMPLETE"}
        assert len(done) == study["counts"]["COMPLETE"]
        best = client.best("demo")
        assert best["trials"][0]["values"][0] == study["best_value"]

        (worker,) = client.workers("demo")
        lines = list(client.logs(worker["id"], tail=5))
        assert 0 < len(lines) <= 5
        trial_lines = list(client.logs(worker["id"], trial=0, tail=1000))
        assert trial_lines
        assert all(" trial=0 " in line for line in trial_lines)
        # The worker has ended: following sends the last lines, then ends.
        followed = list(client.logs(worker["id"], tail=5, follow=True))
        assert followed == lines

        client.delete("demo")
        with pytest.raises(ServiceError) as gone:
            client.study("demo")
        assert (gone.value.status, gone.value.code) == (404, "not_found")


def test_pause_resume_stop_and_listing_every_page(service_url: str) -> None:
    with Client(service_url, WRITE) as client:
        for name in ("a", "b", "c"):
            client.create_study(synthetic(name, n_trials=50, workers=1, epochs=50, sleep_s=0.05))
        assert sorted(s["name"] for s in client.studies(page_size=1)) == ["a", "b", "c"]
        # Following a live worker: lines arrive while it trains.
        worker = wait_for(lambda: client.workers("a"), 30, "study a's worker")[0]
        lines = client.logs(worker["id"], follow=True)
        first = wait_for(lambda: next(line for line in lines if " trial=" in line), 60, "a line")
        assert " trial=" in first
        assert client.study("a")["status"] == "running"
        assert client.pause("a")["status"] == "paused"
        assert client.resume("a")["status"] == "running"
        with pytest.raises(TimeoutError, match="still runs"):
            client.wait("a", timeout_s=0.3, interval_s=0.1)
        for name in ("a", "b", "c"):
            assert client.stop(name)["status"] == "stopped"


def test_tokens_decide_what_a_client_may_do(service_url: str) -> None:
    with Client(service_url, WRITE) as writer:
        writer.create_study(synthetic("t", n_trials=1, epochs=1))
    with Client(service_url, READ) as reader:
        assert reader.study("t")["name"] == "t"
        with pytest.raises(ServiceError) as refused:
            reader.create_study(synthetic("u", n_trials=1))
        assert refused.value.status == 403
        assert "read token" in refused.value.detail
    with Client(service_url) as anonymous, pytest.raises(ServiceError) as missing:
        anonymous.study("t")
    assert missing.value.status == 401
    with Client(service_url, WRITE) as writer:
        assert [s["name"] for s in writer.studies()] == ["t"]  # 'u' was never created


def test_errors_carry_the_services_code_detail_and_fields(service_url: str, tmp_path: Path) -> None:
    with Client(service_url, WRITE) as client:
        with pytest.raises(ServiceError) as invalid:
            client.create_study({"name": "bad", "task": "synthetic", "n_trials": 0})
        error = invalid.value
        assert (error.status, error.code) == (422, "invalid_request")
        assert [e["field"] for e in error.errors] == ["n_trials"]
        assert "n_trials" in str(error)
        with pytest.raises(ServiceError) as unknown:
            client.best("nothing-here")
        assert (unknown.value.status, unknown.value.code) == (404, "not_found")
        assert "nothing-here" in unknown.value.detail
        client.create_study(synthetic("busy", n_trials=50, workers=1, epochs=50, sleep_s=0.05))
        with pytest.raises(ServiceError) as conflict:
            client.delete("busy")
        assert conflict.value.status == 409
        client.stop("busy")
        with pytest.raises(ServiceError) as no_worker:
            list(client.logs(2**31 - 2, follow=True))
        assert no_worker.value.status == 404

    with Client(f"http://127.0.0.1:{free_port()}") as nowhere, pytest.raises(ServiceError) as down:
        nowhere.study("x")
    assert (down.value.status, down.value.code) == (None, "unreachable")
    assert "helios-hpo serve" in down.value.detail


async def _not_the_service(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An HTTP server that is not the service: HTML, 200 under /studies, else 502."""
    if scope["type"] != "http":
        return
    status = 200 if scope["path"].startswith("/studies") else 502
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/html")],
        }
    )
    await send({"type": "http.response.body", "body": b"<html>a proxy</html>"})


def test_an_answer_that_is_not_the_services_is_a_service_error() -> None:
    with serving(_not_the_service) as url, Client(url) as client:
        with pytest.raises(ServiceError) as html:
            client.study("x")
        assert (html.value.status, html.value.code) == (200, "not_json")
        assert f"is {url} the helios-hpo service?" in html.value.detail
        with pytest.raises(ServiceError) as proxy:
            client.tasks()
        assert (proxy.value.status, proxy.value.code) == (502, "http_error")
        assert proxy.value.detail == "<html>a proxy</html>"
