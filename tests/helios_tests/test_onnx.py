"""helios.onnx: a network exported, checked, and compared with onnxruntime's output."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from helios import onnx
from helios.nn import layers


class Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 4), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.b(torch.sigmoid(self.a(x)))
        return out


class Drifting(nn.Module):
    """Its output in torch differs from what it exports: validation must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + (1.0 if self.calls == 1 else 0.0)


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def test_export_validates_against_onnxruntime(tmp_path: Path) -> None:
    out = tmp_path / "mlp.onnx"
    onnx.export_to_onnx(Mlp(), torch.rand(5, 8), out, validate_output=True)
    assert out.stat().st_size > 0


def test_the_adaptive_pool_exports(tmp_path: Path) -> None:
    out = tmp_path / "pool.onnx"
    onnx.export_to_onnx(
        layers.AdaptiveAvgPool2d((5, 7)), torch.randn(1, 4, 8, 9), out, validate_output=True
    )
    assert out.exists()


def test_a_mismatch_fails_and_removes_the_file_when_asked(tmp_path: Path) -> None:
    out = tmp_path / "drift.onnx"
    with pytest.raises(AssertionError):
        onnx.export_to_onnx(
            Drifting(), torch.zeros(2, 3), out, validate_output=True, save_on_validation_fail=False
        )
    assert not out.exists()


def test_without_onnx_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"helios-hpo\[helios-full\]"):
        onnx.export_to_onnx(Mlp(), torch.rand(1, 8), tmp_path / "x.onnx")
