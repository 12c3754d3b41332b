"""Layers helios adds to torch's."""

from helios.nn.layers.pool import AdaptiveAvgPool2d

__all__ = ["AdaptiveAvgPool2d"]
