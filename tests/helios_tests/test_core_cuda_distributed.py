"""helios.core.cuda and helios.core.distributed, outside and inside a process group."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helios.core import cuda, distributed
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]


def test_requires_cuda_support_says_what_to_do() -> None:
    if torch.cuda.is_available():
        cuda.requires_cuda_support()
    else:
        with pytest.raises(RuntimeError, match="GPU host"):
            cuda.requires_cuda_support()


def test_cudnn_benchmark_scope_restores_the_setting() -> None:
    before = torch.backends.cudnn.benchmark
    with cuda.DisableCuDNNBenchmarkContext():
        if torch.cuda.is_available():
            assert not torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before


def test_outside_a_process_group(capsys: pytest.CaptureFixture[str]) -> None:
    assert not distributed.is_dist_active()
    assert distributed.get_dist_info() == distributed.DistributedInfo(0, 0, 1, 1)
    assert (distributed.get_global_rank(), distributed.get_world_size()) == (0, 1)
    distributed.safe_barrier()  # nothing to wait for
    distributed.global_print("once")
    distributed.local_print("again")
    assert capsys.readouterr().out == "once\nagain\n"
    with pytest.raises(RuntimeError, match="init_dist"):
        distributed.all_reduce_tensors(torch.ones(1))
    with pytest.raises(ValueError, match="both"):
        distributed.init_dist("gloo", rank=0)


RANK_SCRIPT = """
import sys, torch
from helios.core import distributed as d
rank = int(sys.argv[1])
d.init_dist("gloo", rank=rank, world_size=2)
info = d.get_dist_info()
total = d.all_reduce_tensors(torch.tensor([rank + 1.0]))
d.safe_barrier()
d.global_print(f"rank {info.rank} of {info.world_size}: sum {total.item():g}", global_rank=1)
d.shutdown_dist()
"""


def test_two_ranks_reduce_and_print_once(tmp_path: Path) -> None:
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MASTER_PORT": str(free_port()),
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    ranks = [
        subprocess.Popen(
            [sys.executable, str(script), str(r)], env=env, stdout=subprocess.PIPE, text=True
        )
        for r in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=120)[0] for p in ranks]
    finally:
        for p in ranks:
            p.kill()
    assert [p.returncode for p in ranks] == [0, 0], outs
    assert outs == ["", "rank 1 of 2: sum 3\n"]
