"""The model registry, and finding a pre-trained network's file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from helios.registry import Registry

if TYPE_CHECKING:
    from helios.model.model import Model

__all__ = ["MODEL_REGISTRY", "create_model", "find_pretrained_file"]

MODEL_REGISTRY: Registry[Any] = Registry("model")
"""Models by class name; ``@MODEL_REGISTRY.register`` on a class adds it."""


def create_model(type_name: str, *args: Any, **kwargs: Any) -> Model:
    """A model of the registered type ``type_name``, made with these arguments."""
    return MODEL_REGISTRY.get(type_name)(*args, **kwargs)  # type: ignore[no-any-return]


def find_pretrained_file(root: Path, name: str) -> Path:
    """The ``.pth`` file in ``root`` whose name holds ``FOLDER_NAME_`` (``root``'s folder
    name, then ``name``): in ``models/cifar``, ``resnet-50`` finds ``cifar_resnet-50_*.pth``.

    Raises:
        RuntimeError: no such file.
    """
    root = Path(root)
    prefix = f"{root.stem}_{name}_"
    for path in sorted(root.glob("*.pth")):
        if prefix in path.stem:
            return path
    raise RuntimeError(f"no pre-trained network named {name!r} in {root} (no *{prefix}*.pth)")
