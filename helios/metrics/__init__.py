"""Metrics by name (helios-ml's ``helios.metrics``): PSNR, SSIM, mAP and MAE, as modules
and as functions (``helios.metrics.functional``)."""

from helios.metrics import functional
from helios.metrics.metrics import (
    METRICS_REGISTRY,
    CalculateMAE,
    CalculateMAP,
    CalculatePSNR,
    CalculateSSIM,
    create_metric,
)

__all__ = [
    "METRICS_REGISTRY",
    "CalculateMAE",
    "CalculateMAP",
    "CalculatePSNR",
    "CalculateSSIM",
    "create_metric",
    "functional",
]
