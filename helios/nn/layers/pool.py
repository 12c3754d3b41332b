"""An adaptive average pool that exports to ONNX: a fixed ``avg_pool2d`` per input size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AdaptiveAvgPool2d"]


class AdaptiveAvgPool2d(nn.Module):
    """``torch.nn.AdaptiveAvgPool2d``'s output shape, computed by a plain average pool.

    Args:
        output_size: ``(H, W)``, or ``H`` for ``(H, H)``; None in the tuple keeps that
            dimension of the input.

    Raises:
        RuntimeError: ``output_size`` is not an int nor a pair of ints or None.
    """

    def __init__(self, output_size: int | tuple[int | None, int | None]) -> None:
        super().__init__()
        if isinstance(output_size, bool) or not isinstance(output_size, int | tuple):
            raise RuntimeError(f"output_size must be an int or a pair, not {output_size!r}")
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2 or any(
            isinstance(s, bool) or not isinstance(s, int | None) for s in output_size
        ):
            raise RuntimeError(f"output_size must be a pair of ints or None, not {output_size!r}")
        self._output_size: tuple[int | None, int | None] = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled input."""
        height, width = int(x.shape[-2]), int(x.shape[-1])
        out_h = height if self._output_size[0] is None else self._output_size[0]
        out_w = width if self._output_size[1] is None else self._output_size[1]
        stride = (height // out_h, width // out_w)
        kernel = (height - (out_h - 1) * stride[0], width - (out_w - 1) * stride[1])
        return F.avg_pool2d(x, kernel_size=kernel, stride=stride)
