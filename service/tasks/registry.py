"""Tasks by name: the built-in ones and those registered under the helios_hpo.tasks entry point."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from service.tasks.builtin import DIGITS, SYNTHETIC
from service.tasks.task import Task

__all__ = ["ENTRY_POINT_GROUP", "UnknownTaskError", "all_tasks", "get_task", "register_task"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "helios_hpo.tasks"


class UnknownTaskError(KeyError):
    """No task of that name is registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown task {self.name!r}; registered tasks: {', '.join(self.known) or 'none'}"


_TASKS: dict[str, Task] = {task.name: task for task in (DIGITS, SYNTHETIC)}
_entry_points_loaded = False


def register_task(task: Task) -> Task:
    """Register ``task``; a different task under a taken name is refused."""
    existing = _TASKS.get(task.name)
    if existing is not None and existing is not task:
        raise ValueError(f"task name {task.name!r} is already registered")
    _TASKS[task.name] = task
    return task


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            task = ep.load()
            register_task(task() if callable(task) and not isinstance(task, Task) else task)
        except Exception:
            log.exception("could not load task entry point %s = %s", ep.name, ep.value)


def all_tasks() -> dict[str, Task]:
    """Every registered task, built-in and from entry points, by name."""
    _load_entry_points()
    return dict(sorted(_TASKS.items()))


def get_task(name: str) -> Task:
    """The task registered under ``name``."""
    tasks = all_tasks()
    if name not in tasks:
        raise UnknownTaskError(name, list(tasks))
    return tasks[name]
