"""Conditional parameters: which parameters of a search space a trial searches, and in
what order they are suggested. Kept free of torch: the API validates with it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["condition_holds", "suggest_space", "suggestion_order"]

# A search-space entry as JSON: {"type": ..., ..., "when": {parent: [values] | {"min", "max"}}}
Space = Mapping[str, Mapping[str, Any]]


def condition_holds(when: Mapping[str, Any] | None, values: Mapping[str, Any]) -> bool:
    """Whether a parameter with ``"when": when`` is searched, given the values suggested so
    far: each parent was suggested and its value is one of the listed values (compared
    with their types: ``1`` is not ``true``) or within ``{"min": a, "max": b}``."""
    for parent, condition in (when or {}).items():
        if parent not in values:
            return False
        value = values[parent]
        if isinstance(condition, Mapping):
            low, high = condition.get("min"), condition.get("max")
            if (low is not None and value < low) or (high is not None and value > high):
                return False
        elif not any(type(value) is type(c) and value == c for c in condition):
            return False
    return True


def suggestion_order(space: Space) -> list[str]:
    """The parameters in the order they are suggested: each after the parameters its
    condition reads, otherwise as written.

    Raises:
        ValueError: a condition on a parameter not in the space, or a cycle.
    """
    parents = {name: list(entry.get("when") or {}) for name, entry in space.items()}
    for name, names in parents.items():
        unknown = [parent for parent in names if parent not in space]
        if unknown:
            raise ValueError(f"the condition of {name!r} reads {unknown}, not in the space")
    order: list[str] = []
    while len(order) < len(space):
        ready = [n for n in space if n not in order and all(p in order for p in parents[n])]
        if not ready:
            cycle = sorted(set(space) - set(order))
            raise ValueError(f"the conditions of {cycle} depend on each other in a cycle")
        order.append(ready[0])
    return order


def suggest_space(suggest: Callable[..., Any], space: Space) -> dict[str, Any]:
    """Suggest the parameters of ``space`` whose conditions hold, in dependency order, with
    ``suggest(type, name, **distribution_args)`` (``OptunaPlugin.suggest``)."""
    values: dict[str, Any] = {}
    for name in suggestion_order(space):
        entry = space[name]
        if condition_holds(entry.get("when"), values):
            args = {key: value for key, value in entry.items() if key not in ("type", "when")}
            values[name] = suggest(entry["type"], name, **args)
    return values
