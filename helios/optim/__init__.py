"""Optimizers by name (helios-ml's ``helios.optim``): torch's, and any registered."""

from helios.optim.utils import OPTIMIZER_REGISTRY, create_optimizer

__all__ = ["OPTIMIZER_REGISTRY", "create_optimizer"]
