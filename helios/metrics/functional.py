"""PSNR, SSIM, mAP and MAE on NumPy arrays and on torch tensors.

Arrays are images of 0-255 (HWC, or CHW with ``input_order``); tensors are batches of
0-1 images (NCHW). SSIM follows Wang et al. (an 11x11 Gaussian window of sigma 1.5,
valid positions only), as helios-ml computes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from helios.data.functional import convert_to_hwc, rgb2ycbcr_torch, to_y_channel

__all__ = [
    "calculate_mAP",
    "calculate_mae",
    "calculate_mae_torch",
    "calculate_psnr",
    "calculate_psnr_torch",
    "calculate_ssim",
    "calculate_ssim_torch",
]

_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> npt.NDArray[np.float64]:
    offsets = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    return np.outer(kernel, kernel)


def _filter_valid(img: npt.NDArray[np.float64], window: npt.NDArray[np.float64]) -> Any:
    """Correlation of ``img`` with ``window`` where the window fits whole."""
    patches = sliding_window_view(img, window.shape)
    return np.einsum("ijkl,kl->ij", patches, window)


def _ssim(img: npt.NDArray[np.float64], img2: npt.NDArray[np.float64]) -> float:
    window = _gaussian_window()
    mu1, mu2 = _filter_valid(img, window), _filter_valid(img2, window)
    var1 = _filter_valid(img * img, window) - mu1**2
    var2 = _filter_valid(img2 * img2, window) - mu2**2
    cov = _filter_valid(img * img2, window) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + _C1) * (2 * cov + _C2)) / (
        (mu1**2 + mu2**2 + _C1) * (var1 + var2 + _C2)
    )
    return float(ssim_map.mean())


def _ssim_torch(img: torch.Tensor, img2: torch.Tensor) -> float:
    channels = img.shape[1]
    window = torch.from_numpy(_gaussian_window()).to(img).expand(channels, 1, 11, 11)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    mu1, mu2 = blur(img), blur(img2)
    var1 = blur(img * img) - mu1**2
    var2 = blur(img2 * img2) - mu2**2
    cov = blur(img * img2) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + _C1) / (mu1**2 + mu2**2 + _C1)) * (
        (2 * cov + _C2) / (var1 + var2 + _C2)
    )
    return float(ssim_map.mean([1, 2, 3]))


def _same_shape(a: Any, b: Any) -> None:
    if a.shape != b.shape:
        raise ValueError(f"the images differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")


def _prepared(
    img: npt.NDArray[Any], crop_border: int, input_order: str, test_y_channel: bool
) -> npt.NDArray[np.float64]:
    img = convert_to_hwc(img, input_order=input_order)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
    if test_y_channel:
        img = to_y_channel(img)
    return img.astype(np.float64)


def _prepared_torch(img: torch.Tensor, crop_border: int, test_y_channel: bool) -> torch.Tensor:
    if crop_border:
        img = img[:, :, crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel:
        img = rgb2ycbcr_torch(img, only_y=True)
    return img.to(torch.float64)


def calculate_psnr(
    img: npt.NDArray[Any],
    img2: npt.NDArray[Any],
    crop_border: int,
    input_order: str = "HWC",
    test_y_channel: bool = False,
) -> float:
    """PSNR (dB) of two 0-255 images, ``crop_border`` pixels off each edge; ``inf`` when
    they are equal. ``test_y_channel``: on the Y channel of YCbCr."""
    _same_shape(img, img2)
    a = _prepared(img, crop_border, input_order, test_y_channel)
    b = _prepared(img2, crop_border, input_order, test_y_channel)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def calculate_psnr_torch(
    img: torch.Tensor, img2: torch.Tensor, crop_border: int, test_y_channel: bool = False
) -> float:
    """PSNR (dB) of two batches of 0-1 images (NCHW)."""
    _same_shape(img, img2)
    a = _prepared_torch(img, crop_border, test_y_channel)
    b = _prepared_torch(img2, crop_border, test_y_channel)
    mse = torch.mean((a - b) ** 2, dim=[1, 2, 3])
    return float(10.0 * torch.log10(1.0 / (mse + 1e-8)))


def calculate_ssim(
    img: npt.NDArray[Any],
    img2: npt.NDArray[Any],
    crop_border: int,
    input_order: str = "HWC",
    test_y_channel: bool = False,
) -> float:
    """SSIM of two 0-255 images, averaged over channels."""
    _same_shape(img, img2)
    a = _prepared(img, crop_border, input_order, test_y_channel)
    b = _prepared(img2, crop_border, input_order, test_y_channel)
    return float(np.mean([_ssim(a[..., c], b[..., c]) for c in range(a.shape[2])]))


def calculate_ssim_torch(
    img: torch.Tensor, img2: torch.Tensor, crop_border: int, test_y_channel: bool = False
) -> float:
    """SSIM of two batches of 0-1 images (NCHW)."""
    _same_shape(img, img2)
    a = _prepared_torch(img, crop_border, test_y_channel)
    b = _prepared_torch(img2, crop_border, test_y_channel)
    return _ssim_torch(a * 255.0, b * 255.0)


def _average_precision(scores: npt.NDArray[Any], targets: npt.NDArray[Any]) -> float:
    ranked = targets[np.argsort(scores)[::-1]] == 1
    hits = np.cumsum(ranked)
    precision_at_hits = np.where(ranked, hits / np.arange(1, len(ranked) + 1), 0.0)
    return float(precision_at_hits.sum() / (hits[-1] + 1e-8))


def calculate_mAP(targs: npt.NDArray[Any], preds: npt.NDArray[Any]) -> float:  # noqa: N802
    """Mean average precision (percent) over the columns (classes) with a positive
    target; 0 for no predictions."""
    if np.size(preds) == 0:
        return 0.0
    precisions = [
        _average_precision(preds[:, k], targs[:, k])
        for k in range(preds.shape[1])
        if np.sum(targs[:, k]) != 0
    ]
    return 100.0 * float(np.sum(precisions)) / len(precisions)


def calculate_mae(pred: npt.NDArray[Any], gt: npt.NDArray[Any], scale: float = 1.0) -> float:
    """Mean absolute error of arrays in ``[0, scale]``, as a fraction of ``scale``."""
    total = np.sum(np.abs(pred.astype(np.float32) - gt.astype(np.float32)))
    return float(total / (np.prod(gt.shape) * scale + 1e-4))


def calculate_mae_torch(pred: torch.Tensor, gt: torch.Tensor, scale: float = 1.0) -> float:
    """Mean absolute error of tensors in ``[0, scale]``, as a fraction of ``scale``."""
    total = torch.sum(torch.abs(pred.float() - gt.float()))
    return float(total / (gt.numel() * scale + 1e-4))
