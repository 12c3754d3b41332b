"""On a GPU: a digits study trains on CUDA through CUDAPlugin and finishes."""

from __future__ import annotations

import pytest
import torch

from tests.e2e.harness import Service, wait_for_status

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture
def service_env() -> dict[str, str]:
    return {"HELIOS_HPO_GPUS": "0"}


def test_a_digits_study_trains_on_the_gpu(service: Service) -> None:
    spec = {
        "name": "digits-gpu",
        "task": "digits",
        "n_trials": 8,
        "sampler": {"name": "TPESampler", "args": {"seed": 1}},
        "pruner": {"name": "MedianPruner", "args": {"n_startup_trials": 3}},
        "task_args": {"epochs": 10},
        "workers": {"count": 1, "gpus_per_worker": 1},
    }
    with service.client() as client:
        assert client.post("/studies", json=spec).status_code == 201
        study = wait_for_status(client, "digits-gpu", 300, service)
        assert study["status"] == "finished", study["status_reason"]
        counts = study["counts"]
        assert counts["COMPLETE"] + counts["PRUNED"] == 8
        assert counts["RUNNING"] == 0
        assert study["best_value"] >= 0.9
        (worker,) = client.get("/studies/digits-gpu/workers").json()
        assert worker["gpus"] == "0"
        lines = client.get(f"/workers/{worker['id']}/logs?tail=10000").json()["lines"]
    device = torch.cuda.get_device_name(0)
    assert any(f"training on {device}" in line for line in lines), lines[:20]
