"""Workers and their logs through the API: tails, per-trial lines, a live stream."""

from __future__ import annotations

import signal

import pytest

from tests.e2e.harness import Service, wait_for, wait_for_status
from tests.specs import synthetic

pytestmark = pytest.mark.slow


def test_workers_logs_and_a_followed_stream(service: Service) -> None:
    spec = synthetic(
        "logged",
        n_trials=6,
        epochs=3,
        sleep_s=0.1,
        workers=1,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        # A worker is listed as starting before its process is started, then as running.
        workers = wait_for(
            lambda: [w for w in client.get("/studies/logged/workers").json() if w["pid"]],
            30,
            "a started worker",
        )
        (worker,) = workers
        assert worker["launcher"] == "local"
        assert worker["pid"] > 0
        assert worker["state"] == "running"

        events: list[str] = []
        with client.stream(
            "GET", f"/workers/{worker['id']}/logs?follow=true&tail=5", timeout=120
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            ended = False
            for line in stream.iter_lines():
                if line == "event: end":
                    ended = True
                elif line.startswith("data: "):
                    events.append(line.removeprefix("data: "))
                    if ended:
                        break
        assert events[-1] == "worker ended"
        # The stream is the log's last lines, each once and none missing.
        whole = client.get(f"/workers/{worker['id']}/logs?tail=10000").json()["lines"]
        streamed = events[:-1]
        assert len(streamed) > 5
        assert whole[-len(streamed) :] == streamed
        ended_lines = ("trial complete", "trial pruned")
        assert any("trial=5 " in e and e.split(": ", 1)[1].startswith(ended_lines) for e in events)

        study = wait_for_status(client, "logged", 60, service)
        assert study["status"] == "finished"
        logs = client.get(f"/workers/{worker['id']}/logs?tail=3").json()
        assert logs["state"] == "exited"
        assert len(logs["lines"]) == 3
        assert "budget of 6 trials spent" in logs["lines"][-1]

        trial2 = client.get(f"/workers/{worker['id']}/logs?trial=2").json()["lines"]
        assert trial2
        assert all(" trial=2 " in line for line in trial2)
        assert any("trial started" in line for line in trial2)
        assert any(line.split(": ", 1)[1].startswith(ended_lines) for line in trial2)

        assert client.get("/workers/9999/logs").status_code == 404
        assert client.get("/studies/nope/workers").status_code == 404
        assert client.get(f"/workers/{worker['id']}/logs?tail=0").status_code == 422


def test_sigterm_ends_followed_log_streams_and_the_service_exits(service: Service) -> None:
    # The service stopped answering on SIGTERM but stayed alive until the last follower
    # of a worker's log disconnected, which a live worker's follower never does.
    spec = synthetic("followed", n_trials=1, epochs=200, sleep_s=0.5, workers=1)
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        (worker,) = wait_for(
            lambda: [w for w in client.get("/studies/followed/workers").json() if w["pid"]],
            30,
            "a started worker",
        )
        with client.stream(
            "GET", f"/workers/{worker['id']}/logs?follow=true", timeout=60
        ) as stream:
            lines = stream.iter_lines()
            assert next(lines).startswith("data: ")  # following
            service.process.send_signal(signal.SIGTERM)
            rest = [line for line in lines if line]
    assert rest[-2:] == ["event: end", "data: service stopping"]
    # uvicorn exits by the signal it was sent, once it has shut down.
    assert service.process.wait(timeout=30) in (0, -signal.SIGTERM)
