"""Distributed data parallel under torchrun: detection and the few collectives helios needs."""

from __future__ import annotations

import atexit
import dataclasses
import datetime as dt
import os
from typing import TypeVar

import torch
import torch.distributed as dist

__all__ = ["DistributedEnv", "any_rank", "broadcast_object", "detect", "init_process_group"]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits in a torchrun launch (world_size 1 when not launched so)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        """More than one process trains together."""
        return self.world_size > 1


def detect() -> DistributedEnv:
    """Read the variables torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedEnv()
    return DistributedEnv(
        rank=int(os.environ["RANK"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        world_size=world_size,
    )


def init_process_group(device: torch.device, timeout: dt.timedelta | None = None) -> None:
    """Join the process group (nccl on CUDA, gloo otherwise) once per process.

    ``timeout`` bounds each collective: a rank waiting on one that died raises after it
    (None: torch's default).
    """
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timeout)
    atexit.register(_destroy)


def _destroy() -> None:
    # Ranks leave together: tearing down gloo while a peer still talks to it aborts.
    if dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError:  # a peer is gone already: nobody to wait for
            pass
        finally:
            dist.destroy_process_group()


def broadcast_object(obj: T, src: int = 0) -> T:
    """Every rank gets rank ``src``'s ``obj`` (a no-op outside a process group)."""
    if not dist.is_initialized():
        return obj
    box: list[object] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]  # type: ignore[return-value]


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank."""
    if not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())
