"""Exponential moving average of a network's weights."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA(nn.Module):
    """A copy of ``net`` (in eval mode) whose weights follow ``net``'s by
    ``ema = decay * ema + (1 - decay) * net`` at each ``update``.

    Args:
        net: the network to follow.
        decay: the weight of the average's past (0.9997 by default).
        device: where the copy lives (where ``net`` does when None).
    """

    def __init__(self, net: nn.Module, decay: float = 0.9997, device: torch.device | None = None):
        super().__init__()
        self._module = copy.deepcopy(net).eval()
        self._decay = decay
        self._device = device
        if device is not None:
            self._module.to(device=device)

    @property
    def module(self) -> nn.Module:
        """The averaged network."""
        return self._module

    @torch.no_grad()
    def _update(self, net: nn.Module, rule: Callable[[Any, Any], Any]) -> None:
        pairs = zip(self._module.state_dict().values(), net.state_dict().values(), strict=True)
        for ours, theirs in pairs:
            if self._device is not None:
                theirs = theirs.to(device=self._device)
            ours.copy_(rule(ours, theirs))

    def update(self, net: nn.Module) -> None:
        """Move the average towards ``net``'s weights."""
        self._update(net, lambda ema, new: self._decay * ema + (1.0 - self._decay) * new)

    def set(self, net: nn.Module) -> None:
        """Take ``net``'s weights as they are."""
        self._update(net, lambda ema, new: new)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The averaged network's output."""
        return self._module(*args, **kwargs)
