"""helios.metrics and helios.data.functional: values a user can check by hand, and the
array and tensor paths agreeing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helios import metrics
from helios.data import functional as hldf
from helios.metrics import functional as F


def test_metrics_by_name() -> None:
    for name in ("CalculatePSNR", "CalculateSSIM", "CalculateMAP", "CalculateMAE"):
        assert name in metrics.METRICS_REGISTRY
    assert isinstance(metrics.create_metric("CalculateMAE", 255), metrics.CalculateMAE)


def test_psnr_by_hand() -> None:
    a = np.zeros((4, 4, 1))
    b = np.full((4, 4, 1), 16.0)  # mse 256
    assert F.calculate_psnr(a, b, 0) == pytest.approx(10 * math.log10(255.0**2 / 256))
    assert F.calculate_psnr(a, a, 0) == math.inf
    ta, tb = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.5)  # mse 0.25
    assert F.calculate_psnr_torch(ta, tb, 0) == pytest.approx(10 * math.log10(1 / 0.25), 1e-6)
    with pytest.raises(ValueError, match="shape"):
        F.calculate_psnr(a, np.zeros((4, 5, 1)), 0)


def test_ssim_of_an_image_with_itself_is_one_and_both_paths_agree() -> None:
    gen = np.random.default_rng(0)
    img = gen.random((3, 24, 20)) * 255
    noisy = np.clip(img + gen.normal(0, 20, img.shape), 0, 255)
    assert F.calculate_ssim(img, img, 0, "CHW") == pytest.approx(1.0)
    as_array = F.calculate_ssim(img, noisy, 2, "CHW")
    as_tensor = F.calculate_ssim_torch(
        torch.from_numpy(img / 255)[None], torch.from_numpy(noisy / 255)[None], 2
    )
    assert 0.0 < as_array < 0.99
    assert as_tensor == pytest.approx(as_array, abs=1e-9)
    module = metrics.CalculateSSIM(2, "CHW")
    assert module(img, noisy) == pytest.approx(as_array)
    with pytest.raises(TypeError, match="two tensors or two arrays"):
        module(torch.zeros(1), img)


def test_y_channel_paths_agree() -> None:
    gen = np.random.default_rng(1)
    rgb = gen.random((16, 16, 3)) * 255
    bgr = rgb[..., ::-1].copy()
    y = hldf.to_y_channel(bgr)
    y_torch = hldf.rgb2ycbcr_torch(torch.from_numpy(rgb / 255).permute(2, 0, 1)[None], True)
    assert y.shape == (16, 16, 1)
    assert np.allclose(y[..., 0], y_torch[0, 0].numpy() * 255, atol=1e-3)
    assert np.allclose(hldf.bgr2ycbcr(np.zeros((1, 1, 3), np.uint8)), [[[16, 128, 128]]])
    white = hldf.bgr2ycbcr(np.full((1, 1, 3), 255, np.uint8), only_y=True)
    assert white.dtype == np.uint8
    assert white.item() == 235
    before = rgb.copy()
    hldf.bgr2ycbcr(rgb / 255)
    assert np.array_equal(rgb, before)  # the input is left as it is


def test_map_by_hand() -> None:
    targs = np.array([[1, 0], [0, 1], [1, 0]])
    preds = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    # class 0: ranks 1 (hit), 2, 3 (hit) -> (1 + 2/3) / 2; class 1: a hit at rank 2 -> 1/2
    expected = 100 * ((1 + 2 / 3) / 2 + 1 / 2) / 2
    assert F.calculate_mAP(targs, preds) == pytest.approx(expected, rel=1e-6)
    assert metrics.CalculateMAP()(targs, preds) == pytest.approx(expected, rel=1e-6)
    assert F.calculate_mAP(targs, np.zeros((0, 2))) == 0


def test_mae_both_paths() -> None:
    pred, gt = np.full((2, 2), 255.0), np.zeros((2, 2))
    assert F.calculate_mae(pred, gt, 255) == pytest.approx(1.0, rel=1e-6)
    module = metrics.CalculateMAE(255)
    assert module(torch.from_numpy(pred), torch.from_numpy(gt)) == pytest.approx(1.0, rel=1e-6)


def test_tensor_to_numpy_leaves_the_tensor_alone() -> None:
    x = torch.tensor([[[0.0, 2.0]], [[0.5, -1.0]], [[1.0, 0.25]]])  # CHW, 3x1x2
    assert hldf.tensor_to_numpy(x).shape == (3, 2)  # squeezed to 2-D: left as CH
    out = hldf.tensor_to_numpy(x, squeeze=False)
    assert out.shape == (1, 2, 3)
    assert out.dtype == np.uint8
    assert out[0, 1].tolist() == [255, 0, 64]
    assert x[0, 0, 1] == 2.0
    assert hldf.convert_to_hwc(np.zeros((3, 4, 5)), "CHW").shape == (4, 5, 3)
    with pytest.raises(ValueError, match="input_order"):
        hldf.convert_to_hwc(np.zeros((3, 4)), "WHC")
