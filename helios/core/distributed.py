"""helios-ml's distributed helpers: the process group, ranks and world sizes, a few
collectives and rank-filtered printing. Each works outside a process group too."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistributedInfo",
    "all_reduce_tensors",
    "gather_into_tensor",
    "get_dist_info",
    "get_global_rank",
    "get_local_rank",
    "get_local_world_size",
    "get_world_size",
    "global_print",
    "init_dist",
    "is_dist_active",
    "is_using_torchrun",
    "local_print",
    "safe_barrier",
    "shutdown_dist",
]

# What torchrun sets in each process it starts.
_TORCHRUN_VARIABLES = (
    "LOCAL_RANK",
    "RANK",
    "GROUP_RANK",
    "ROLE_RANK",
    "LOCAL_WORLD_SIZE",
    "WORLD_SIZE",
    "ROLE_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_RUN_ID",
)
_DEFAULT_PORT = "12355"


def is_using_torchrun() -> bool:
    """This process was started by torchrun (every variable torchrun sets is set)."""
    return all(name in os.environ for name in _TORCHRUN_VARIABLES)


def init_dist(
    backend: str = "nccl", rank: int | None = None, world_size: int | None = None
) -> None:
    """Join the default process group.

    Under torchrun leave ``rank`` and ``world_size`` out; started by hand, give both
    (one node: the rendezvous is localhost).

    Raises:
        ValueError: only one of ``rank`` and ``world_size`` was given.
    """
    if rank is None and world_size is None:
        dist.init_process_group(backend)
        return
    if rank is None or world_size is None:
        raise ValueError("give both rank and world_size, or neither (under torchrun)")
    for name, value in (
        ("LOCAL_RANK", rank),
        ("RANK", rank),
        ("LOCAL_WORLD_SIZE", world_size),
        ("WORLD_SIZE", world_size),
    ):
        os.environ[name] = str(value)
    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ.setdefault("MASTER_PORT", _DEFAULT_PORT)
    device = torch.device("cuda", rank) if backend == "nccl" else None
    dist.init_process_group(backend, rank=rank, world_size=world_size, device_id=device)


def shutdown_dist() -> None:
    """Leave the default process group."""
    dist.destroy_process_group()


def is_dist_active() -> bool:
    """A default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


@dataclasses.dataclass
class DistributedInfo:
    """Ranks and world sizes: on 2 nodes of 2 GPUs, ``local_rank`` 0-1, ``rank`` 0-3,
    ``local_world_size`` 2, ``world_size`` 4."""

    local_rank: int = 0
    rank: int = 0
    local_world_size: int = 1
    world_size: int = 1


def get_dist_info() -> DistributedInfo:
    """This process's place in the run (ranks 0, sizes 1 outside a process group)."""
    if not is_dist_active():
        return DistributedInfo()
    world_size = dist.get_world_size()
    return DistributedInfo(
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        rank=dist.get_rank(),
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
        world_size=world_size,
    )


def get_local_rank() -> int:
    """The rank on this node (0 outside a process group)."""
    return get_dist_info().local_rank


def get_global_rank() -> int:
    """The rank in the whole run (0 outside a process group)."""
    return get_dist_info().rank


def get_local_world_size() -> int:
    """The processes on this node (1 outside a process group)."""
    return get_dist_info().local_world_size


def get_world_size() -> int:
    """The processes of the whole run (1 outside a process group)."""
    return get_dist_info().world_size


def _require_group() -> None:
    if not is_dist_active():
        raise RuntimeError("no process group: call init_dist first (or run under torchrun)")


def gather_into_tensor(tensor: torch.Tensor, size: tuple[int, ...], **kwargs: Any) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated into one of ``size``, on every rank.

    Raises:
        RuntimeError: outside a process group.
    """
    _require_group()
    out = torch.zeros(size, device=tensor.device, dtype=tensor.dtype)
    dist.all_gather_into_tensor(out, tensor, **kwargs)
    return out


def all_reduce_tensors(tensor: torch.Tensor | list[torch.Tensor], **kwargs: Any) -> torch.Tensor:
    """``tensor`` (or a list of them, stacked) reduced across ranks, on every rank.

    Raises:
        RuntimeError: outside a process group.
    """
    _require_group()
    if isinstance(tensor, list):
        device = torch.device("cuda", get_local_rank()) if torch.cuda.is_available() else None
        tensor = torch.tensor(tensor, device=device)
    dist.all_reduce(tensor, **kwargs)
    return tensor


def global_print(*args: Any, global_rank: int = 0, **kwargs: Any) -> None:
    """``print`` on the process of rank ``global_rank`` only (always outside a group)."""
    if not is_dist_active() or get_global_rank() == global_rank:
        print(*args, **kwargs)  # noqa: T201 (a print wrapper)


def local_print(*args: Any, local_rank: int = 0, **kwargs: Any) -> None:
    """``print`` on the process of local rank ``local_rank`` only (always outside a group)."""
    if not is_dist_active() or get_local_rank() == local_rank:
        print(*args, **kwargs)  # noqa: T201 (a print wrapper)


def safe_barrier(**kwargs: Any) -> None:
    """``torch.distributed.barrier``, and nothing outside a process group."""
    if is_dist_active():
        dist.barrier(**kwargs)
