"""State changes of one study sent together: exactly one wins, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import optuna

from service.api import create_app
from service.settings import Settings
from service.storage.db import optuna_storage
from tests.specs import synthetic
from tests.support import serving

PAIRS = 12


def _together(*calls: Callable[[], httpx.Response]) -> list[int]:
    """Send the calls at the same moment from threads of their own; their status codes."""
    barrier = threading.Barrier(len(calls))
    codes: list[int] = [0] * len(calls)

    def send(i: int) -> None:
        barrier.wait()
        codes[i] = calls[i]().status_code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return codes


def test_resume_and_delete_sent_together_never_both_succeed(settings: Settings) -> None:
    with (
        serving(create_app(settings, supervise=False)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        outcomes = set()
        for i in range(PAIRS):
            name = f"race-{i}"
            assert client.post("/studies", json=synthetic(name)).status_code == 201
            assert client.post(f"/studies/{name}/stop").status_code == 200
            resume, delete = _together(
                lambda n=name: client.post(f"/studies/{n}/resume"),  # type: ignore[misc]
                lambda n=name: client.delete(f"/studies/{n}"),  # type: ignore[misc]
            )
            after = client.get(f"/studies/{name}")
            if resume == 200:
                assert delete in (404, 409), (resume, delete)
                assert after.json()["status"] == "running"
            else:
                assert (resume, delete) in ((404, 204), (409, 204)), (resume, delete)
                assert after.status_code == 404
            outcomes.add((resume, delete))
        names = set(optuna.get_all_study_names(optuna_storage(settings.database_url)))
        kept = {s["name"] for s in client.get("/studies?limit=100").json()["items"]}
        assert names == kept  # no Optuna study without its row, nor the reverse


def test_stop_and_pause_sent_together_leave_one_status(settings: Settings) -> None:
    with (
        serving(create_app(settings, supervise=False)) as url,
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        for i in range(PAIRS):
            name = f"sp-{i}"
            assert client.post("/studies", json=synthetic(name)).status_code == 201
            stop, pause = _together(
                lambda n=name: client.post(f"/studies/{n}/stop"),  # type: ignore[misc]
                lambda n=name: client.post(f"/studies/{n}/pause"),  # type: ignore[misc]
            )
            status = client.get(f"/studies/{name}").json()["status"]
            # Stop also takes a paused study: both may succeed, one after the other.
            assert 200 in (stop, pause), (stop, pause)
            assert pause in (200, 409)
            assert stop in (200, 409)
            assert status == ("stopped" if stop == 200 else "paused"), (stop, pause, status)
