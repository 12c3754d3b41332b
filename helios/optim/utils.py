"""The optimizer registry, holding torch's optimizers from the start."""

from __future__ import annotations

from typing import Any

from torch import optim

from helios.registry import Registry

__all__ = ["OPTIMIZER_REGISTRY", "create_optimizer"]

OPTIMIZER_REGISTRY: Registry[Any] = Registry("optimizer")
"""Optimizers by class name; ``OPTIMIZER_REGISTRY.register(MyOptimizer)`` adds one."""

for _optimizer in (
    optim.Adadelta,
    optim.Adagrad,
    optim.Adam,
    optim.AdamW,
    optim.SparseAdam,
    optim.Adamax,
    optim.ASGD,
    optim.LBFGS,
    optim.NAdam,
    optim.RAdam,
    optim.RMSprop,
    optim.Rprop,
    optim.SGD,
):
    OPTIMIZER_REGISTRY.register(_optimizer)


def create_optimizer(type_name: str, *args: Any, **kwargs: Any) -> optim.Optimizer:
    """An optimizer of the registered type ``type_name``, made with these arguments."""
    return OPTIMIZER_REGISTRY.get(type_name)(*args, **kwargs)  # type: ignore[no-any-return]
