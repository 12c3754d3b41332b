"""The scheduler registry, holding torch's learning-rate schedulers from the start."""

from __future__ import annotations

from typing import Any

from torch.optim import lr_scheduler

from helios.registry import Registry

__all__ = ["SCHEDULER_REGISTRY", "create_scheduler"]

SCHEDULER_REGISTRY: Registry[Any] = Registry("scheduler")
"""Schedulers by class name; ``SCHEDULER_REGISTRY.register(MyScheduler)`` adds one."""

for _scheduler in (
    lr_scheduler.LambdaLR,
    lr_scheduler.MultiplicativeLR,
    lr_scheduler.StepLR,
    lr_scheduler.MultiStepLR,
    lr_scheduler.ConstantLR,
    lr_scheduler.LinearLR,
    lr_scheduler.ExponentialLR,
    lr_scheduler.PolynomialLR,
    lr_scheduler.CosineAnnealingLR,
    lr_scheduler.SequentialLR,
    lr_scheduler.ReduceLROnPlateau,
    lr_scheduler.CyclicLR,
    lr_scheduler.OneCycleLR,
    lr_scheduler.CosineAnnealingWarmRestarts,
):
    SCHEDULER_REGISTRY.register(_scheduler)


def create_scheduler(type_name: str, *args: Any, **kwargs: Any) -> lr_scheduler.LRScheduler:
    """A scheduler of the registered type ``type_name``, made with these arguments."""
    return SCHEDULER_REGISTRY.get(type_name)(*args, **kwargs)  # type: ignore[no-any-return]
