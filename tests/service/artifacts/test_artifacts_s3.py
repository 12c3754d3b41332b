"""Stored models in an S3 bucket (HELIOS_HPO_ARTIFACT_STORE=s3://BUCKET).

No S3 service runs here: the bucket is served by moto's S3 server (the dev extra),
a separate process that speaks the S3 API over HTTP, so the service and its
workers go through boto3 and the network as they would with MinIO or AWS.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from service.api import create_app
from service.artifacts.store import artifact_dir
from service.client import Client, ServiceError
from service.settings import Settings
from tests.databases import sqlite_only
from tests.specs import synthetic
from tests.support import free_port, serving, wait_for

pytestmark = pytest.mark.slow
XS = [2.0, 1.0, 3.5, -5.0, 0.0, 2.5]  # as in test_artifacts: trial 0 best, then 5


@pytest.fixture(scope="module")
def s3_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3 API server on a free port, stopped by its PID at the end."""
    port = free_port()
    log = tmp_path_factory.mktemp("s3") / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(  # noqa: S603 (our interpreter, moto's server)
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _answers(url) or server.poll() is not None, 60, "the S3 server")
        assert server.poll() is None, log.read_text()[-2000:]
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


@pytest.fixture
def bucket(
    s3_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> tuple[Any, str, Settings]:
    """A new bucket; the service and (through its environment) its workers store there."""
    name = f"models-{abs(hash(request.node.nodeid)) % 10**8}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "helios",
        "AWS_SECRET_ACCESS_KEY": "helios-secret",  # noqa: S105 (the test server's)
        "AWS_DEFAULT_REGION": "us-east-1",
        "HELIOS_HPO_ARTIFACT_STORE": f"s3://{name}",
        "HELIOS_HPO_ARTIFACT_S3_ENDPOINT_URL": s3_url,
    }.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=s3_url)
    s3.create_bucket(Bucket=name)
    update = {"artifact_store": f"s3://{name}", "artifact_s3_endpoint_url": s3_url}
    return s3, name, settings.model_copy(update=update)


def _objects(s3: Any, name: str) -> dict[str, int]:
    listed = s3.list_objects_v2(Bucket=name).get("Contents", [])
    return {o["Key"]: o["Size"] for o in listed}


@sqlite_only  # the bucket does not care which database
def test_models_go_to_the_bucket_and_retention_and_deletion_apply_there(
    bucket: tuple[Any, str, Settings], tmp_path: Path
) -> None:
    s3, name, settings = bucket
    spec = synthetic(
        "in-s3",
        n_trials=len(XS),
        workers=1,
        epochs=2,
        state_bytes=50_000,
        enqueue_trials=[{"x": x, "y": 3} for x in XS],
        pruner={"name": "ThresholdPruner", "args": {"upper": 20.0}},
        artifacts={"keep_best_k": 2},
    )
    with serving(create_app(settings)) as url, Client(url) as client:
        client.create_study(spec)
        study = client.wait("in-s3", timeout_s=120, interval_s=0.2)
        assert study["status"] == "finished", study["status_reason"]

        # The best two trials' models are the bucket's objects; none is on disk.
        kept = {n: client.artifacts("in-s3", n)[0] for n in (0, 5)}
        assert all(a["available"] for a in kept.values())
        assert _objects(s3, name) == {a["id"]: a["size_bytes"] for a in kept.values()}
        assert not artifact_dir(settings.data_dir).exists()
        (dropped,) = client.artifacts("in-s3", 1)
        assert not dropped["available"]
        assert "deleted by retention" in dropped["reason"]
        disk = client.study("in-s3")["disk"]
        assert disk == {"checkpoints_bytes": 0, "artifacts_bytes": None}  # a bucket: not disk

        saved = client.download_model("in-s3", tmp_path / "best.pt")
        assert (saved.trial, saved.sha256) == (0, kept[0]["sha256"])
        assert saved.size_bytes == kept[0]["size_bytes"]
        assert hashlib.sha256(saved.path.read_bytes()).hexdigest() == kept[0]["sha256"]
        with pytest.raises(ServiceError) as gone:
            client.download_artifact("in-s3", 1, dropped["id"], tmp_path / "x.pt")
        assert gone.value.status == 404

        ended = ("exited", "failed", "stopped", "lost")
        wait_for(
            lambda: all(w["state"] in ended for w in client.workers("in-s3")), 30, "the worker"
        )
        client.delete("in-s3")
        assert _objects(s3, name) == {}


@sqlite_only
def test_a_download_started_before_retention_removes_the_object_arrives_whole(
    bucket: tuple[Any, str, Settings],
) -> None:
    s3, name, settings = bucket
    spec = synthetic(
        "race-s3", n_trials=1, workers=1, epochs=1, state_bytes=8_000_000,
        artifacts={"keep": "complete"},
    )  # fmt: skip
    with serving(create_app(settings)) as url, Client(url) as client:
        client.create_study(spec)
        assert client.wait("race-s3", timeout_s=120, interval_s=0.2)["status"] == "finished"
        (artifact,) = client.artifacts("race-s3", 0)
        where = f"{url}/studies/race-s3/trials/0/artifacts/{artifact['id']}"
        with httpx.stream("GET", where) as response:
            assert response.status_code == 200
            chunks = response.iter_bytes()
            received = [next(chunks)]
            s3.delete_object(Bucket=name, Key=artifact["id"])  # as retention would
            received += list(chunks)
        body = b"".join(received)
        assert len(body) == artifact["size_bytes"] > 8_000_000
        assert hashlib.sha256(body).hexdigest() == artifact["sha256"]
        assert httpx.get(where).status_code == 404


def test_a_bucket_name_that_is_not_one_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="artifact_store"):
        Settings(data_dir=tmp_path, artifact_store="s3://Not_A_Bucket")
