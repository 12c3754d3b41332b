"""A loss scaled by a weight: subclasses compute ``_eval``, calls return weight times it."""

from __future__ import annotations

import abc
from typing import Any

from torch import nn

__all__ = ["WeightedLoss"]


class WeightedLoss(nn.Module, abc.ABC):
    """``loss_weight * self._eval(...)`` when called.

    Args:
        loss_weight: the weight (1 by default).
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        super().__init__()
        self._loss_weight = loss_weight

    @abc.abstractmethod
    def _eval(self, *args: Any, **kwargs: Any) -> Any:
        """The unweighted loss."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The weighted loss."""
        return self._loss_weight * self._eval(*args, **kwargs)
