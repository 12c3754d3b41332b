"""helios.optim and helios.scheduler: registries of torch's types, and the two
schedulers with restarts."""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim import lr_scheduler

from helios import optim, scheduler


def _sgd(lr: float = 1.0) -> torch.optim.Optimizer:
    return optim.create_optimizer("SGD", [torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _rates(opt: torch.optim.Optimizer, sched: lr_scheduler.LRScheduler, steps: int) -> list[float]:
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def test_optimizers_by_name() -> None:
    for name in ("Adam", "AdamW", "SGD", "RMSprop", "LBFGS", "SparseAdam"):
        assert name in optim.OPTIMIZER_REGISTRY
    assert str(optim.OPTIMIZER_REGISTRY) == "optimizer"
    opt = _sgd(0.5)
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(KeyError):
        optim.create_optimizer("NoSuchOptimizer")


def test_schedulers_by_name_with_the_restart_ones() -> None:
    for name in ("StepLR", "OneCycleLR", "ReduceLROnPlateau", "CosineAnnealingRestartLR"):
        assert name in scheduler.SCHEDULER_REGISTRY
    sched = scheduler.create_scheduler("StepLR", _sgd(), step_size=1, gamma=0.5)
    assert isinstance(sched, lr_scheduler.StepLR)


def test_a_registered_type_is_created_with_its_arguments() -> None:
    class Halving(lr_scheduler.LambdaLR):
        def __init__(self, optimizer: torch.optim.Optimizer, factor: float = 0.5) -> None:
            super().__init__(optimizer, lambda step: factor**step)

    scheduler.SCHEDULER_REGISTRY.register(Halving)
    opt = _sgd()
    sched = scheduler.create_scheduler("Halving", opt, factor=0.25)
    assert _rates(opt, sched, 3) == [1.0, 0.25, 0.0625]


def test_cosine_annealing_restarts_each_cycle_from_its_weight() -> None:
    opt = _sgd(1.0)
    sched = scheduler.CosineAnnealingRestartLR(opt, [4, 4], [1.0, 0.5], eta_min=0.0)

    def cosine(weight: float, step: int, period: int) -> float:
        return weight * 0.5 * (1 + math.cos(math.pi * step / period))

    expected = [cosine(1.0, i, 4) for i in range(5)] + [cosine(0.5, i, 4) for i in (1, 2, 3, 4)]
    # past the last cycle, the first cycle's curve over the whole count (helios-ml's)
    expected.append(cosine(1.0, 9, 4))
    assert _rates(opt, sched, 10) == pytest.approx(expected)


def test_multi_step_restart_decays_at_milestones_and_jumps_at_restarts() -> None:
    opt = _sgd(1.0)
    sched = scheduler.MultiStepRestartLR(
        opt, milestones=[2, 4, 4], gamma=0.5, restarts=[0, 6], restart_weights=[1.0, 0.5]
    )
    assert _rates(opt, sched, 9) == pytest.approx([1, 1, 0.5, 0.5, 0.125, 0.125, 0.5, 0.5, 0.5])


def test_restart_weights_must_match() -> None:
    with pytest.raises(ValueError, match="one weight per period"):
        scheduler.CosineAnnealingRestartLR(_sgd(), [4, 4], [1.0])
    with pytest.raises(ValueError, match="one weight per restart"):
        scheduler.MultiStepRestartLR(_sgd(), [2], restarts=[0, 5])
