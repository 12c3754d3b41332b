"""helios-ml's small utilities: optionals, lists, a working-directory scope, a moving
average timer, registries and their discovery, and safe ``torch.load``."""

from __future__ import annotations

import collections
import importlib
import importlib.metadata
import os
import platform
import re
import types
from pathlib import Path
from time import perf_counter
from typing import IO, Any, BinaryIO, TypeVar, overload

import torch

from helios.registry import Registry

__all__ = [
    "AverageTimer",
    "ChdirContext",
    "Registry",
    "convert_to_list",
    "get_env_info_str",
    "get_from_optional",
    "safe_torch_load",
    "update_all_registries",
]

T = TypeVar("T")

# A line that registers what follows: ``@SOMETHING.register`` (helios-ml's rule).
_REGISTERS = re.compile(r"@\S+\.register\s")


def get_env_info_str() -> str:
    """A banner with the versions of helios, torch, torchvision, Python and the OS."""
    from helios import __version__

    try:
        vision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        vision = "not installed"
    rule = "#" + "=" * 75 + "#"
    lines = [
        rule,
        "  helios: a light-weight trainer for PyTorch",
        "",
        "Environment info:",
        f"\tHelios: {__version__}",
        f"\tPyTorch: {torch.__version__}",
        f"\tTorchVision: {vision}",
        f"\tOS: {platform.platform()}",
        f"\tPython: {platform.python_version()}",
    ]
    if torch.cuda.is_available():
        lines.append(f"\tCUDA version: {torch.version.cuda}")
    return "\n".join([*lines, rule]) + "\n\n"


def get_from_optional(opt_var: T | None, raise_on_empty: bool = False) -> T:
    """``opt_var``, which must not be None: a ``RuntimeError`` with ``raise_on_empty``,
    else an ``AssertionError``, when it is."""
    if opt_var is None:
        if raise_on_empty:
            raise RuntimeError("the optional value is empty (None)")
        raise AssertionError("the optional value is empty (None)")
    return opt_var


@overload
def convert_to_list(var: list[T]) -> list[T]: ...
@overload
def convert_to_list(var: tuple[T, ...]) -> list[T]: ...
@overload
def convert_to_list(var: T) -> list[T]: ...


def convert_to_list(var: Any) -> list[Any]:
    """``var`` as a list: a list as is, a tuple's items, anything else alone in one."""
    if isinstance(var, list):
        return var
    if isinstance(var, tuple):
        return list(var)
    return [var]


class ChdirContext:
    """Work in ``target_path`` inside the scope; back where it started after it.

    Entering returns the directory it started in.
    """

    def __init__(self, target_path: str | os.PathLike[str]) -> None:
        self.start_path = Path.cwd()
        self.target_path = target_path

    def __enter__(self) -> Path:
        os.chdir(self.target_path)
        return self.start_path

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        os.chdir(self.start_path)


class AverageTimer:
    """The average time between ``record`` calls over the last ``sliding_window`` of them.

    The clock starts when the timer is made, and again at ``start``.
    """

    def __init__(self, sliding_window: int = 200) -> None:
        self._steps: collections.deque[float] = collections.deque(maxlen=max(1, sliding_window))
        self._last = perf_counter()

    def start(self) -> None:
        """Start timing from now."""
        self._last = perf_counter()

    def record(self) -> None:
        """Record the time since the last record (or start) as one step."""
        now = perf_counter()
        self._steps.append(now - self._last)
        self._last = now

    def get_average_time(self) -> float:
        """The average step in seconds (0 before the first record)."""
        return sum(self._steps) / len(self._steps) if self._steps else 0.0


def update_all_registries(root: Path, recurse: bool = True, import_prefix: str = "") -> None:
    """Import every module of the package at ``root`` that registers something.

    A module registers something when a line of it starts with ``@NAME.register``; it
    is imported as ``PREFIX.PACKAGE.MODULE`` (the package's folder name, after
    ``import_prefix`` when given), sub-packages too with ``recurse``.

    Raises:
        RuntimeError: ``root`` is not a folder, or not a package (no ``__init__.py``).
    """
    root = Path(root)
    if not root.is_dir():
        raise RuntimeError(f"{root} is not a folder: give the folder of a package")
    if not (root / "__init__.py").is_file():
        raise RuntimeError(f"{root} is not a Python package: it has no __init__.py")
    package = f"{import_prefix}.{root.name}" if import_prefix else root.name
    registering: list[str] = []
    for path in sorted(root.iterdir()):
        if path.is_dir() and recurse and not path.name.startswith(("__", ".")):
            if (path / "__init__.py").is_file():
                update_all_registries(path, True, package)
        elif path.suffix == ".py" and path.stem != "__init__":
            text = path.read_text(encoding="utf-8")
            if any(_REGISTERS.match(line) for line in text.splitlines(keepends=True)):
                registering.append(f"{package}.{path.stem}")
    for module in registering:
        importlib.import_module(module)


def safe_torch_load(f: str | os.PathLike[str] | BinaryIO | IO[bytes], **kwargs: Any) -> Any:
    """``torch.load`` with ``weights_only=True``: only tensors, plain data and the types
    registered with ``torch.serialization.add_safe_globals`` load."""
    if "weights_only" in kwargs:
        raise TypeError("safe_torch_load sets weights_only itself; leave it out")
    return torch.load(f, weights_only=True, **kwargs)
