"""Losses by name (helios-ml's ``helios.losses``): torch's, and weighted ones of your own."""

from helios.losses.utils import LOSS_REGISTRY, create_loss
from helios.losses.weighted_loss import WeightedLoss

__all__ = ["LOSS_REGISTRY", "WeightedLoss", "create_loss"]
