"""Local workers get distinct GPUs from HELIOS_HPO_GPUS through CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
from pathlib import Path

import pytest

from tests.e2e.harness import (
    Service,
    start_service,
    stop_service,
    wait_for,
    wait_for_status,
)
from tests.specs import synthetic

pytestmark = pytest.mark.slow


@pytest.fixture
def service_env() -> dict[str, str]:
    return {"HELIOS_HPO_GPUS": "3,5"}


def test_each_worker_gets_its_own_gpu_and_a_third_waits(service: Service) -> None:
    spec = synthetic(
        "leases",
        n_trials=12,
        epochs=4,
        sleep_s=0.05,
        workers=3,
        gpus_per_worker=1,
    )
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201

        def two_workers() -> list[dict[str, object]] | None:
            workers: list[dict[str, object]] = client.get("/studies/leases").json()["workers"]
            return workers if len(workers) >= 2 else None

        workers = wait_for(two_workers, 30, "two workers")
        live = [w for w in workers if w["state"] in ("starting", "running")]
        assert sorted(str(w["gpus"]) for w in live) == ["3", "5"]  # two GPUs: two workers
        study = wait_for_status(client, "leases", 120, service)
        assert study["status"] == "finished"
        too_many = client.post(
            "/studies",
            json={**spec, "name": "greedy", "workers": {"count": 1, "gpus_per_worker": 3}},
        )
        assert too_many.status_code == 422
        assert "3 GPUs per worker asked, this service has 2" in too_many.text

    seen = set()
    for log in service.data_dir.rglob("worker-*.log"):
        match = re.search(r"CUDA_VISIBLE_DEVICES='(\d*)'", log.read_text())
        assert match is not None
        seen.add(match[1])
    assert seen == {"3", "5"}


class TestSharedGpu:
    @pytest.fixture
    def service_env(self) -> dict[str, str]:
        return {"HELIOS_HPO_GPUS": "3", "HELIOS_HPO_WORKERS_PER_GPU": "2"}

    def test_two_workers_share_a_gpu_and_a_restarted_service_keeps_it_leased(
        self, service: Service, tmp_path: Path
    ) -> None:
        spec = synthetic(
            "sharing",
            n_trials=20,
            epochs=10,
            sleep_s=0.1,
            workers=2,
            gpus_per_worker=1,
        )
        with service.client() as client:
            assert client.post("/studies", json=spec).status_code == 201
            # Rows are written before their processes start: wait for both to run.
            wait_for(
                lambda: (
                    [w["state"] for w in client.get("/studies/sharing/workers").json()]
                    == ["running", "running"]
                ),
                60,
                "two running workers",
            )
        os.killpg(service.process.pid, signal.SIGKILL)
        service.process.wait()

        second = start_service(
            service.database_url, service.data_dir, tmp_path / "second.log", service.env
        )
        try:
            with second.client() as client:
                late = {**spec, "name": "late", "n_trials": 1, "workers": {"gpus_per_worker": 1}}
                assert client.post("/studies", json=late).status_code == 201
                states = [w["state"] for w in client.get("/studies/sharing/workers").json()]
                assert states == ["running", "running"]  # adopted, still training
                wait_for_status(client, "late", 180, second)
                sharing = client.get("/studies/sharing/workers").json()
                (late_worker,) = client.get("/studies/late/workers").json()
        finally:
            stop_service(second)
        assert [w["gpus"] for w in sharing] == ["3", "3"]
        assert late_worker["gpus"] == "3"
        # The adopted workers kept both places on GPU 3: the late study's worker
        # started only once one of them had ended.
        ended = sorted(dt.datetime.fromisoformat(w["ended_at"]) for w in sharing if w["ended_at"])
        started = dt.datetime.fromisoformat(late_worker["started_at"])
        assert ended, f"the late worker started and ended while both adopted ones ran: {sharing}"
        assert started >= ended[0]
