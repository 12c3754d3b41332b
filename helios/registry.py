"""A small name -> class registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


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
    """Maps class names to classes.

    Args:
        kind: what the registry holds, used in error messages (``"plugin"``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[T]] = {}

    def register(self, cls: type[T]) -> type[T]:
        """Register ``cls`` under its class name; usable as a decorator.

        Registering the same class again is a no-op. A different class under a
        name already taken is refused.
        """
        name = cls.__name__
        existing = self._classes.get(name)
        if existing is not None and _qualified(existing) != _qualified(cls):
            raise ValueError(
                f"{self.kind} name {name!r} is taken by {_qualified(existing)}; "
                f"rename {_qualified(cls)}"
            )
        self._classes[name] = cls
        return cls

    def get(self, name: str) -> type[T]:
        """Return the class registered under ``name``."""
        try:
            return self._classes[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, sorted(self._classes)) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Instantiate the class registered under ``name``."""
        factory: Callable[..., T] = self.get(name)
        return factory(*args, **kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._classes))

    def __len__(self) -> int:
        return len(self._classes)


def _qualified(cls: type[Any]) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
