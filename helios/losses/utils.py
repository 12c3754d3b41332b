"""The loss registry, holding torch's losses from the start."""

from __future__ import annotations

from typing import Any

from torch import nn

from helios.registry import Registry

__all__ = ["LOSS_REGISTRY", "create_loss"]

LOSS_REGISTRY: Registry[Any] = Registry("loss")
"""Losses by class name; ``@LOSS_REGISTRY.register`` on a class adds it."""

for _loss in (
    nn.L1Loss,
    nn.MSELoss,
    nn.CrossEntropyLoss,
    nn.CTCLoss,
    nn.NLLLoss,
    nn.PoissonNLLLoss,
    nn.GaussianNLLLoss,
    nn.KLDivLoss,
    nn.BCELoss,
    nn.BCEWithLogitsLoss,
    nn.MarginRankingLoss,
    nn.HingeEmbeddingLoss,
    nn.MultiLabelMarginLoss,
    nn.HuberLoss,
    nn.SmoothL1Loss,
    nn.SoftMarginLoss,
    nn.MultiLabelSoftMarginLoss,
    nn.CosineEmbeddingLoss,
    nn.MultiMarginLoss,
    nn.TripletMarginLoss,
    nn.TripletMarginWithDistanceLoss,
):
    LOSS_REGISTRY.register(_loss)


def create_loss(type_name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """A loss of the registered type ``type_name``, made with these arguments."""
    return LOSS_REGISTRY.get(type_name)(*args, **kwargs)  # type: ignore[no-any-return]
