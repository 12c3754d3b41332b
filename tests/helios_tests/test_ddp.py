from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]


def _torchrun(script: str, *args: str) -> None:
    """Run ``script`` on two CPU ranks (gloo) and check that both exit cleanly."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            str(REPO / "tests" / "helios_tests" / script),
            *args,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.mark.slow
def test_rank0_pruning_decision_stops_both_ranks(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'ddp.db'}"
    _torchrun("ddp_prune.py", storage, str(tmp_path))

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for result in ranks:
        assert result["world_size"] == 2
        assert result["pruned"] is True
        # Pruned after the 2nd validation cycle of 10 epochs: both stop there.
        assert (result["epochs"], result["cycles"]) == (2, 2)
        assert result["save_name"] == "boring_trial-0"
    assert ranks[0]["lr"] == ranks[1]["lr"]  # the suggestion was broadcast
    assert ranks[0]["batches"] == ranks[1]["batches"] == 2 * 4  # 64 samples / 2 ranks / 8

    (trial,) = optuna.load_study(study_name="ddp", storage=storage).trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [0, 1]


@pytest.mark.slow
def test_a_drawn_seed_read_on_one_rank_only_is_the_same_on_both(tmp_path: Path) -> None:
    # Drawing the seed is collective: done lazily in the getter, rank 0's lone read paired
    # with rank 1's next broadcast, which then got the seed instead of its value.
    _torchrun("ddp_seed.py", str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["seed"] == ranks[0]["first_read"] == ranks[1]["seed"]
    assert ranks[0]["lr"] == ranks[1]["lr"] == 0.05
