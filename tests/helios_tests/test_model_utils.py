"""helios.model's registry and pre-trained file lookup."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import helios.model as hlm


def test_models_by_name() -> None:
    @hlm.MODEL_REGISTRY.register
    class Named(hlm.Model):
        def __init__(self, save_name: str = "named") -> None:
            super().__init__(save_name)

        def setup(self, *args: Any, **kwargs: Any) -> None:
            pass

    model = hlm.create_model("Named", save_name="x")
    assert isinstance(model, Named)
    assert model.save_name == "x"
    with pytest.raises(KeyError):
        hlm.create_model("Missing")


def test_find_pretrained_file(tmp_path: Path) -> None:
    root = tmp_path / "cifar"
    root.mkdir()
    (root / "cifar_resnet-50_epoch10.pth").write_bytes(b"")
    (root / "cifar_resnet-18_epoch10.pth").write_bytes(b"")
    (root / "cifar_resnet-50_notes.txt").write_bytes(b"")
    assert hlm.find_pretrained_file(root, "resnet-50").name == "cifar_resnet-50_epoch10.pth"
    with pytest.raises(RuntimeError, match="resnet-101"):
        hlm.find_pretrained_file(root, "resnet-101")
