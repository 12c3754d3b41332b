"""CUDA helpers of helios-ml: a check for CUDA, and cuDNN benchmarking off for a scope."""

from __future__ import annotations

import types

import torch

__all__ = ["DisableCuDNNBenchmarkContext", "requires_cuda_support"]


def requires_cuda_support() -> None:
    """Raise ``RuntimeError`` unless torch can use a CUDA device here."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            "this needs a CUDA device and none is available: run it on a GPU host, or with "
            "a CUDA build of torch"
        )


class DisableCuDNNBenchmarkContext:
    """``torch.backends.cudnn.benchmark`` off inside the scope, as it was after it.

    Without CUDA the scope changes nothing.
    """

    def __init__(self) -> None:
        self._was: bool | None = None

    def __enter__(self) -> None:
        if torch.cuda.is_available():
            self._was = torch.backends.cudnn.benchmark
            torch.backends.cudnn.benchmark = False

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        if self._was is not None:
            torch.backends.cudnn.benchmark = self._was
            self._was = None
