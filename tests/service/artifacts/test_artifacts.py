"""Trained models as trial artifacts: stored on COMPLETE, the best K kept, served whole."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import optuna
import pytest
import torch

from service.api import create_app
from service.artifacts.retention import enforce_budget, prune_models
from service.artifacts.store import ModelStore, artifact_dir, save_model
from service.client import Client, ServiceError
from service.settings import Settings
from service.spec.models import ArtifactsSpec
from service.storage import optuna_queries
from service.storage.db import make_engine, make_session_factory, optuna_storage, session_scope
from tests.specs import synthetic
from tests.support import run_cli, serving, wait_for

# Loss (x - 2)^2 + 0.5 (y - 3)^2 + 1/(1 + cycle): trial 0 best, then 5, 1, 2, 4;
# trial 3 (x = -5) is pruned at its first report.
XS = [2.0, 1.0, 3.5, -5.0, 0.0, 2.5]


@pytest.fixture
def service(settings: Settings) -> Iterator[tuple[Client, Settings]]:
    """The service with its supervisor (local workers train), and a client of it."""
    with serving(create_app(settings)) as url, Client(url) as client:
        yield client, settings


def _finished(client: Client, spec: dict[str, Any]) -> dict[str, Any]:
    client.create_study(spec)
    study = client.wait(spec["name"], timeout_s=120, interval_s=0.2)
    assert study["status"] == "finished", study["status_reason"]
    return study


def _ranked_study(name: str, **fields: Any) -> dict[str, Any]:
    return synthetic(
        name,
        n_trials=len(XS),
        workers=1,
        epochs=2,
        enqueue_trials=[{"x": x, "y": 3} for x in XS],
        pruner={"name": "ThresholdPruner", "args": {"upper": 20.0}},
        **fields,
    )


def _stored_files(settings: Settings) -> list[Path]:
    store = artifact_dir(settings.data_dir)
    return sorted(p for p in store.iterdir() if p.is_file()) if store.exists() else []


def test_the_best_k_trials_keep_their_models_and_the_others_say_why(
    service: tuple[Client, Settings], tmp_path: Path
) -> None:
    client, settings = service
    study = _finished(client, _ranked_study("ranked", artifacts={"keep_best_k": 2}))
    assert study["counts"] == {**study["counts"], "COMPLETE": 5, "PRUNED": 1}
    assert study["best_trial"] == 0

    # The best two keep a model; the other COMPLETE trials list theirs as deleted.
    kept = {}
    for number in (0, 1, 2, 4, 5):
        (artifact,) = client.artifacts("ranked", number)
        assert artifact["filename"] == f"trial-{number}-model.pt"
        if number in (0, 5):
            assert artifact["available"], artifact
            assert artifact["size_bytes"] > 0
            kept[number] = artifact
        else:
            assert not artifact["available"]
            assert artifact["size_bytes"] is None
            assert "deleted by retention" in artifact["reason"]
            assert "best 2" in artifact["reason"]
            with pytest.raises(ServiceError) as gone:
                client.download_artifact("ranked", number, artifact["id"], tmp_path / "x.pt")
            assert gone.value.status == 404
            assert "deleted by retention" in gone.value.detail
    assert [p.name for p in _stored_files(settings)] == sorted(a["id"] for a in kept.values())
    assert client.artifacts("ranked", 3) == []  # PRUNED: none stored

    # The best model: whole, its length and checksum in the headers.
    response = httpx.get(f"{client.url}/studies/ranked/best/model")
    assert response.status_code == 200
    assert response.headers["x-trial-number"] == "0"
    assert int(response.headers["content-length"]) == len(response.content)
    sha = base64.b64encode(hashlib.sha256(response.content).digest()).decode()
    assert response.headers["repr-digest"] == f"sha-256=:{sha}:"
    assert hashlib.sha256(response.content).hexdigest() == kept[0]["sha256"]

    saved = client.download_model("ranked", tmp_path / "best.pt")
    assert (saved.trial, saved.sha256) == (0, kept[0]["sha256"])
    model = torch.load(saved.path, weights_only=True)
    assert model["format"] == "helios-hpo-model/1"
    assert (model["task"], model["study"], model["trial"]) == ("synthetic", "ranked", 0)
    assert (model["params"]["x"], model["params"]["y"]) == (2.0, 3)
    assert model["values"] == [study["best_value"]]
    assert not list(tmp_path.glob(".*.part"))

    # Each missing model says why.
    reasons = {
        "/studies/ranked/trials/3/artifacts/" + kept[0]["id"]: "trial 3 is PRUNED",
        "/studies/ranked/trials/0/artifacts/" + "0" * 8 + "-0000-0000-0000-" + "0" * 12: (
            "trial 0 has no artifact"
        ),
        "/studies/ranked/trials/99/artifacts": "the study has no trial 99",
        "/studies/ranked/best/model?trial=5": "trial 5 is not the best trial (0)",
        "/studies/nothing/best/model": "no study named 'nothing'",
    }
    for path, reason in reasons.items():
        answer = httpx.get(f"{client.url}{path}")
        assert answer.status_code == 404, path
        assert reason in answer.json()["detail"], (path, answer.json())


@pytest.mark.parametrize(
    "path",
    [
        "/studies/ranked/trials/0/artifacts/..%2F..%2F..%2Fetc%2Fpasswd",
        "/studies/ranked/trials/0/artifacts/%2Fetc%2Fpasswd",
        "/studies/ranked/trials/0/artifacts/..",
        "/studies/..%2Franked/best/model",
        "/studies/ranked/trials/-1/artifacts",
    ],
)
def test_no_path_outside_the_store_is_served(settings: Settings, path: str) -> None:
    (settings.data_dir / "artifacts").mkdir(parents=True)
    with serving(create_app(settings, supervise=False)) as url:
        answer = httpx.get(url + path)
    assert answer.status_code in (404, 422), answer.text
    assert "root:" not in answer.text


def test_keep_complete_stores_every_model_and_keep_none_stores_none(
    service: tuple[Client, Settings],
) -> None:
    client, settings = service
    _finished(client, _ranked_study("every", artifacts={"keep": "complete"}))
    for number in (0, 1, 2, 4, 5):
        assert [a["available"] for a in client.artifacts("every", number)] == [True]
    assert len(_stored_files(settings)) == 5

    _finished(client, _ranked_study("nothing-kept", artifacts={"keep": "none"}))
    assert client.artifacts("nothing-kept", 0) == []
    with pytest.raises(ServiceError) as none:
        client.download_model("nothing-kept", settings.data_dir / "x.pt")
    assert none.value.status == 404
    assert "keeps no models (artifacts.keep: none)" in none.value.detail
    assert len(_stored_files(settings)) == 5
    client.delete("every")  # with its models
    assert _stored_files(settings) == []


def test_several_objectives_serve_a_model_of_the_pareto_front(
    service: tuple[Client, Settings], tmp_path: Path
) -> None:
    client, _ = service
    objectives = [
        {"metric": "loss", "direction": "minimize"},
        {"metric": "cost", "direction": "minimize"},
    ]
    enqueued = [{"x": 2.0, "y": 3}, {"x": 0.0, "y": 3}, {"x": 3.0, "y": 3}]
    spec = synthetic("front", n_trials=3, epochs=1, objectives=objectives, enqueue_trials=enqueued)
    _finished(client, spec)  # trial 2 is dominated by trial 0 (worse loss, more cost)
    with pytest.raises(ServiceError) as unpicked:
        client.download_model("front", tmp_path / "m.pt")
    assert (unpicked.value.status, unpicked.value.code) == (422, "invalid_request")
    assert [e["field"] for e in unpicked.value.errors] == ["trial"]
    assert "Pareto front: 0, 1" in unpicked.value.errors[0]["message"]
    assert client.download_model("front", tmp_path / "m.pt", trial=1).trial == 1
    with pytest.raises(ServiceError) as dominated:
        client.download_model("front", tmp_path / "m.pt", trial=2)
    assert dominated.value.status == 404
    assert "not on the Pareto front (0, 1)" in dominated.value.detail


def test_retention_never_cuts_a_download_in_flight(settings: Settings) -> None:
    """A model removed while it downloads arrives whole; the next download is a 404."""
    with serving(create_app(settings, supervise=False)) as url, Client(url) as client:
        client.create_study(synthetic("race", n_trials=2))
    study = optuna.load_study(study_name="race", storage=optuna_storage(settings.database_url))
    about = {"task": "synthetic", "params": {}, "task_args": {}, "metrics": {}}
    numbers = []
    for loss, size in ((5.0, 4_000_000), (1.0, 10)):  # the big one is worse
        trial = study.ask()
        save_model(
            trial,
            {"w": {"t": torch.ones(size)}},
            {**about, "values": [loss]},
            ModelStore.of(settings),
        )
        study.tell(trial, loss)
        numbers.append(trial.number)
    sessions = make_session_factory(make_engine(settings.database_url))
    with serving(create_app(settings, supervise=False)) as url:
        (artifact,) = httpx.get(f"{url}/studies/race/trials/{numbers[0]}/artifacts").json()
        where = f"{url}/studies/race/trials/{numbers[0]}/artifacts/{artifact['id']}"
        with httpx.stream("GET", where) as response:
            assert response.status_code == 200
            chunks = response.iter_bytes()
            received = [next(chunks)]
            with session_scope(sessions) as session:
                removed = prune_models(
                    session,
                    optuna_queries.optuna_study_id(session, "race") or -1,
                    ["minimize"],
                    ArtifactsSpec(keep="best_k", keep_best_k=1),
                    ModelStore.of(settings),
                )
            assert removed == [numbers[0]]
            received += list(chunks)
            length = int(response.headers["content-length"])
        body = b"".join(received)
        assert len(body) == length > 16_000_000
        assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
        again = httpx.get(where)
        assert again.status_code == 404
        assert "deleted by retention" in again.json()["detail"]


@pytest.mark.parametrize("keep_checkpoints", [False, True], ids=["default", "kept"])
def test_finished_trials_leave_only_the_kept_models_on_disk(
    settings: Settings, keep_checkpoints: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Local workers read their settings from the service's environment.
    monkeypatch.setenv("HELIOS_HPO_KEEP_FINISHED_CHECKPOINTS", str(keep_checkpoints).lower())
    spec = _ranked_study("disk", artifacts={"keep_best_k": 2}, state_bytes=200_000)
    with serving(create_app(settings)) as url, Client(url) as client:
        _finished(client, spec)
        disk = client.study("disk")["disk"]
    models = _stored_files(settings)
    assert len(models) == 2  # the best two
    assert disk["artifacts_bytes"] == sum(p.stat().st_size for p in models)
    assert 2 * 200_000 < disk["artifacts_bytes"] < 2 * 220_000
    trials = settings.data_dir / "studies" / "disk" / "trials"
    on_disk = sum(p.stat().st_size for p in trials.rglob("*") if p.is_file())
    assert disk["checkpoints_bytes"] == on_disk
    if keep_checkpoints:  # every trial's last checkpoint, the pruned one's too
        assert sorted(int(d.name) for d in trials.iterdir()) == list(range(len(XS)))
        assert on_disk > len(XS) * 200_000
    else:
        assert on_disk == 0


def test_the_service_budget_removes_the_worst_models_and_never_a_best(settings: Settings) -> None:
    budget = 350_000  # three models of about 100 KB
    settings = settings.model_copy(update={"checkpoint_budget_bytes": budget})
    with serving(create_app(settings)) as url, Client(url) as client:
        for name in ("one", "two"):
            spec = _ranked_study(name, artifacts={"keep": "complete"}, state_bytes=100_000)
            _finished(client, spec)
        wait_for(
            lambda: sum(p.stat().st_size for p in _stored_files(settings)) <= budget,
            30,
            "the supervisor to bring the models within the budget",
        )
        kept = {
            (name, number)
            for name in ("one", "two")
            for number in (0, 1, 2, 4, 5)
            if client.artifacts(name, number)[0]["available"]
        }
        (removed,) = client.artifacts("one", 4)
        assert "checkpoint budget" in removed["reason"]
    # The best of each study stays; of the rest, the second best of one study.
    assert {("one", 0), ("two", 0)} <= kept
    assert len(kept) == 3
    assert {number for _, number in kept} == {0, 5}


def test_an_artifact_id_another_tool_wrote_never_names_a_file_outside_the_store(
    settings: Settings,
) -> None:
    victim = settings.data_dir / "victim.txt"
    victim.parent.mkdir(parents=True)
    victim.write_text("keep me")
    with serving(create_app(settings, supervise=False)) as url, Client(url) as client:
        client.create_study(synthetic("hostile", n_trials=3))
        study = optuna.load_study(
            study_name="hostile", storage=optuna_storage(settings.database_url)
        )
        about = {"task": "synthetic", "params": {}, "task_args": {}, "metrics": {}}
        for loss in (0.1, 0.2):
            trial = study.ask()
            save_model(trial, {}, {**about, "values": [loss]}, ModelStore.of(settings))
            study.tell(trial, loss)
        hostile = study.ask()  # the worst: retention and the budget would drop it first
        meta = {"artifact_id": "../victim.txt", "filename": "x", "mimetype": "x", "encoding": None}
        study._storage.set_trial_system_attr(
            hostile._trial_id, "artifacts:../victim.txt", json.dumps(meta)
        )
        study.tell(hostile, 9.0)
        (listed,) = client.artifacts("hostile", hostile.number)
        assert not listed["available"]
        sessions = make_session_factory(make_engine(settings.database_url))
        with session_scope(sessions) as session:
            optuna_id = optuna_queries.optuna_study_id(session, "hostile") or -1
            keep = ArtifactsSpec(keep="best_k", keep_best_k=1)
            models = ModelStore.of(settings)
            assert prune_models(session, optuna_id, ["minimize"], keep, models) == [1]
            enforce_budget(session, settings.data_dir, 1, models)
        client.stop("hostile")
        client.delete("hostile")
    assert victim.read_text() == "keep me"
    assert _stored_files(settings) == []  # the study's own models went with it


def test_a_warm_started_study_whose_best_is_a_copy_serves_the_model_its_original_stored(
    service: tuple[Client, Settings], tmp_path: Path
) -> None:
    # /best/model was a 404 "stored no model" although the copied trial's model is kept
    # by the study it was copied from.
    client, settings = service
    _finished(client, _ranked_study("source"))
    copy = synthetic(
        "warmed",
        n_trials=1,
        workers=1,
        epochs=2,
        warm_start={"from_study": "source"},
        enqueue_trials=[{"x": -4.0, "y": -3}],  # its own trial is far worse than the copies
    )
    study = _finished(client, copy)
    assert study["best_value"] < 2  # a copy of source's trial 0, not its own trial
    served = client.download_model("warmed", tmp_path / "best.pt")
    original = client.download_model("source", tmp_path / "original.pt")
    assert (served.trial, served.stored_by) == (study["best_trial"], "source/0")
    assert served.sha256 == original.sha256
    assert (tmp_path / "best.pt").read_bytes() == (tmp_path / "original.pt").read_bytes()
    assert original.stored_by is None
    result = run_cli("model", "warmed", "-o", str(tmp_path / "cli.pt"), "--url", client.url)
    assert result.returncode == 0, result.stderr
    assert "(a warm-start copy: trial 0 of study 'source' stored it)" in result.stdout

    client.delete("source")  # with its models: the copy says where its model went
    with pytest.raises(ServiceError) as gone:
        client.download_model("warmed", tmp_path / "again.pt")
    assert gone.value.status == 404
    assert gone.value.detail == (
        f"trial {study['best_trial']} is a warm-start copy of trial 0 of study 'source', "
        "which was deleted with its models"
    )


def test_downloads_answer_head_and_byte_ranges_so_a_cut_download_can_go_on(
    service: tuple[Client, Settings],
) -> None:
    # HEAD was a 405 on every route, and Range was ignored: a cut download started over.
    client, _ = service
    _finished(client, _ranked_study("ranged"))
    url = f"{client.url}/studies/ranged/best/model"
    whole = httpx.get(url)
    size = len(whole.content)
    assert whole.headers["accept-ranges"] == "bytes"
    head = httpx.head(url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(size)
    assert head.headers["repr-digest"] == whole.headers["repr-digest"]
    asks = [
        ("bytes=0-9", 0, 9),
        ("bytes=10-", 10, size - 1),
        ("bytes=-5", size - 5, size - 1),
        (f"bytes=7-{size + 99}", 7, size - 1),
    ]
    for asked, first, last in asks:
        part = httpx.get(url, headers={"Range": asked})
        assert part.status_code == 206, asked
        assert part.headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert part.content == whole.content[first : last + 1]
    # Went on from where a cut download stopped: the whole file, its digest checked.
    rest = httpx.get(url, headers={"Range": f"bytes={size // 2}-"}).content
    assert (
        hashlib.sha256(whole.content[: size // 2] + rest).hexdigest()
        == hashlib.sha256(whole.content).hexdigest()
    )
    beyond = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    for ignored in ("bytes=0-1,5-9", "lines=1-2", "bytes=9-3"):  # RFC 9110: the whole file
        assert httpx.get(url, headers={"Range": ignored}).content == whole.content, ignored
    for path in ("/studies", "/studies/ranged", "/studies/ranged/trials", "/healthz"):
        got, head = httpx.get(f"{client.url}{path}"), httpx.head(f"{client.url}{path}")
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == got.headers["content-type"], path
    missing = httpx.head(f"{client.url}/studies/nope")
    assert (missing.status_code, missing.content) == (404, b"")
    worker = client.workers("ranged")[0]["id"]
    followed = httpx.head(f"{client.url}/workers/{worker}/logs?follow=true", timeout=10)
    assert followed.headers["content-type"].startswith("text/event-stream")
