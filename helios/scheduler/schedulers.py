"""Two schedulers with restarts (helios-ml's): cosine annealing over cycles of given
lengths, and step decay that jumps back up at given iterations."""

from __future__ import annotations

import bisect
import collections
import math

from torch import optim
from torch.optim import lr_scheduler

from helios.scheduler.utils import SCHEDULER_REGISTRY

__all__ = ["CosineAnnealingRestartLR", "MultiStepRestartLR"]


@SCHEDULER_REGISTRY.register
class CosineAnnealingRestartLR(lr_scheduler.LRScheduler):
    """Cosine annealing in cycles of ``periods`` iterations; cycle ``i`` starts from
    ``restart_weights[i]`` times the base learning rate and anneals to ``eta_min``.

    ``periods=[10, 10]``, ``restart_weights=[1, 0.5]``: from the base rate down over 10
    iterations, then from half of it down over the next 10. Past the last cycle the
    first cycle's curve applies again (helios-ml's behaviour).

    Raises:
        ValueError: ``periods`` and ``restart_weights`` differ in length.
    """

    def __init__(
        self,
        optimizer: optim.Optimizer,
        periods: list[int],
        restart_weights: list[float] | None = None,
        eta_min: float = 0,
        last_epoch: int = -1,
    ) -> None:
        weights = [1.0] if restart_weights is None else list(restart_weights)
        if len(periods) != len(weights):
            raise ValueError(
                f"{len(periods)} periods and {len(weights)} restart_weights: give one "
                "weight per period"
            )
        self._periods = list(periods)
        self._restart_weights = weights
        self._eta_min = eta_min
        self._ends = [sum(self._periods[: i + 1]) for i in range(len(self._periods))]
        super().__init__(optimizer, last_epoch)

    def _cycle(self) -> int:
        cycle = bisect.bisect_left(self._ends, self.last_epoch)
        return cycle if cycle < len(self._ends) else 0

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """The rate of each parameter group at the current iteration."""
        cycle = self._cycle()
        start = self._ends[cycle - 1] if cycle > 0 else 0
        progress = (self.last_epoch - start) / self._periods[cycle]
        weight = self._restart_weights[cycle]
        return [
            self._eta_min
            + weight * 0.5 * (float(base) - self._eta_min) * (1 + math.cos(math.pi * progress))
            for base in self.base_lrs
        ]


@SCHEDULER_REGISTRY.register
class MultiStepRestartLR(lr_scheduler.LRScheduler):
    """The rate times ``gamma`` at each milestone (twice at a milestone given twice);
    back to ``restart_weights[i]`` times the initial rate at ``restarts[i]``.

    Raises:
        ValueError: ``restarts`` and ``restart_weights`` differ in length.
    """

    def __init__(
        self,
        optimizer: optim.Optimizer,
        milestones: list[int],
        gamma: float = 0.1,
        restarts: list[int] | None = None,
        restart_weights: list[float] | None = None,
        last_epoch: int = -1,
    ) -> None:
        self._restarts = [0] if restarts is None else list(restarts)
        self._restart_weights = [1.0] if restart_weights is None else list(restart_weights)
        if len(self._restarts) != len(self._restart_weights):
            raise ValueError(
                f"{len(self._restarts)} restarts and {len(self._restart_weights)} "
                "restart_weights: give one weight per restart"
            )
        self._milestones = collections.Counter(milestones)
        self._gamma = gamma
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        """The rate of each parameter group at the current iteration."""
        groups = self.optimizer.param_groups
        if self.last_epoch in self._restarts:
            weight = self._restart_weights[self._restarts.index(self.last_epoch)]
            return [group["initial_lr"] * weight for group in groups]
        decays = self._milestones.get(self.last_epoch, 0)
        return [group["lr"] * self._gamma**decays for group in groups]
