"""A small name -> class registry, used as helios-ml's ``Registry`` is."""

from __future__ import annotations

from collections.abc import Callable, ItemsView, Iterator, KeysView
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class UnknownNameError(KeyError):
    """Raised when a registry is asked for a name it does not hold."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = known
        listed = ", ".join(known) if known else "none"
        super().__init__(f"unknown {kind} {name!r}; registered {kind}s: {listed}")

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to classes: ``@REGISTRY.register``, ``@REGISTRY`` or ``REGISTRY.register(cls)``.

    A class is registered under its ``__name__``, or ``NAME_SUFFIX`` with a suffix.
    Iterating yields ``(name, class)`` pairs; ``keys()`` the names.

    Args:
        kind: what the registry holds, used in error messages (``"plugin"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: R, suffix: str | None = None) -> R:
        """Register ``cls`` (under ``NAME_SUFFIX`` with a suffix); usable as a decorator.

        Registering the same class again is a no-op; another class under a name
        already taken is refused.
        """
        name = _name(cls) if suffix is None else f"{_name(cls)}_{suffix}"
        existing = self._classes.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(
                f"{self.kind} name {name!r} is taken by {_qualified(existing)}; "
                f"rename {_qualified(cls)} or register it with a suffix"
            )
        self._classes[name] = cls  # type: ignore[assignment]
        return cls

    def __call__(self, cls: R) -> R:
        """``@REGISTRY`` registers the class it decorates."""
        return self.register(cls)

    def get(self, name: str, suffix: str | None = None) -> type[T]:
        """The class registered under ``name``, else under ``NAME_SUFFIX``."""
        for key in (name,) if suffix is None else (name, f"{name}_{suffix}"):
            if key in self._classes:
                return self._classes[key]
        raise UnknownNameError(self.kind, name, sorted(self._classes))

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Instantiate the class registered under ``name``."""
        factory: Callable[..., T] = self.get(name)
        return factory(*args, **kwargs)

    def keys(self) -> KeysView[str]:
        """The registered names."""
        return self._classes.keys()

    def items(self) -> ItemsView[str, type[T]]:
        """``(name, class)`` pairs."""
        return self._classes.items()

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[tuple[str, type[T]]]:
        return iter(self._classes.items())

    def __len__(self) -> int:
        return len(self._classes)

    def __str__(self) -> str:
        return self.kind


def _name(obj: Any) -> str:
    name = getattr(obj, "__name__", None)
    if not isinstance(name, str):
        raise TypeError(f"only classes and functions can be registered, not {obj!r}")
    return name


def _qualified(cls: Any) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
