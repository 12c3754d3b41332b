"""Local workers get distinct GPUs from HELIOS_HPO_GPUS through CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import re

import pytest

from tests.e2e.conftest import Service, wait_for, wait_for_status

pytestmark = pytest.mark.slow


@pytest.fixture
def service_env() -> dict[str, str]:
    return {"HELIOS_HPO_GPUS": "3,5"}


def test_each_worker_gets_its_own_gpu_and_a_third_waits(service: Service) -> None:
    spec = {
        "name": "leases",
        "task": "synthetic",
        "n_trials": 12,
        "task_args": {"epochs": 4, "sleep_s": 0.05},
        "workers": {"count": 3, "gpus_per_worker": 1},
    }
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201

        def two_workers() -> list[dict[str, object]] | None:
            workers: list[dict[str, object]] = client.get("/studies/leases").json()["workers"]
            return workers if len(workers) >= 2 else None

        workers = wait_for(two_workers, 30, "two workers")
        running = [w for w in workers if w["state"] == "running"]
        assert sorted(str(w["gpus"]) for w in running) == ["3", "5"]  # two GPUs: two workers
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
