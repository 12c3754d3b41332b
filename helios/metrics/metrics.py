"""The metric registry and the metrics as modules: arrays or tensors in, a float out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from helios.metrics import functional
from helios.registry import Registry

__all__ = [
    "METRICS_REGISTRY",
    "CalculateMAE",
    "CalculateMAP",
    "CalculatePSNR",
    "CalculateSSIM",
    "create_metric",
]

METRICS_REGISTRY: Registry[Any] = Registry("metrics")
"""Metrics by class name; ``@METRICS_REGISTRY.register`` on a class adds it."""


def create_metric(type_name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """A metric of the registered type ``type_name``, made with these arguments."""
    return METRICS_REGISTRY.get(type_name)(*args, **kwargs)  # type: ignore[no-any-return]


Image = npt.NDArray[Any] | torch.Tensor


def _arrays(a: Image, b: Image) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
        raise TypeError(
            f"give two tensors or two arrays, not {type(a).__name__} and {type(b).__name__}"
        )
    return a, b


class _ImagePairMetric(nn.Module):
    """A metric of two images: tensors (NCHW, 0-1) or arrays (0-255, ``input_order``)."""

    on_tensors: Callable[[torch.Tensor, torch.Tensor, int, bool], float]
    on_arrays: Callable[[npt.NDArray[Any], npt.NDArray[Any], int, str, bool], float]

    def __init__(self, crop_border: int, input_order: str = "HWC", test_y_channel: bool = False):
        super().__init__()
        self._crop_border = crop_border
        self._input_order = input_order
        self._test_y_channel = test_y_channel

    def forward(self, img: Image, img2: Image) -> float:
        border, y_only = self._crop_border, self._test_y_channel
        if isinstance(img, torch.Tensor) and isinstance(img2, torch.Tensor):
            return type(self).on_tensors(img, img2, border, y_only)
        a, b = _arrays(img, img2)
        return type(self).on_arrays(a, b, border, self._input_order, y_only)


@METRICS_REGISTRY.register
class CalculatePSNR(_ImagePairMetric):
    """PSNR: of tensors (NCHW, 0-1) or arrays (0-255, ``input_order``)."""

    on_tensors = staticmethod(functional.calculate_psnr_torch)
    on_arrays = staticmethod(functional.calculate_psnr)


@METRICS_REGISTRY.register
class CalculateSSIM(_ImagePairMetric):
    """SSIM: of tensors (NCHW, 0-1) or arrays (0-255, ``input_order``)."""

    on_tensors = staticmethod(functional.calculate_ssim_torch)
    on_arrays = staticmethod(functional.calculate_ssim)


@METRICS_REGISTRY.register
class CalculateMAP(nn.Module):
    """Mean average precision (percent) of scores against 0/1 targets, per column."""

    def forward(self, targs: npt.NDArray[Any], preds: npt.NDArray[Any]) -> float:
        return functional.calculate_mAP(targs, preds)


@METRICS_REGISTRY.register
class CalculateMAE(nn.Module):
    """Mean absolute error of values in ``[0, scale]``."""

    def __init__(self, scale: float = 1):
        super().__init__()
        self._scale = scale

    def forward(self, pred: Image, gt: Image) -> float:
        if isinstance(pred, torch.Tensor) and isinstance(gt, torch.Tensor):
            return functional.calculate_mae_torch(pred, gt, self._scale)
        return functional.calculate_mae(*_arrays(pred, gt), self._scale)
