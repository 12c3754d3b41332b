"""Tasks: what a worker trains, by name.

A task's author needs only this package's names: ``Task`` and ``TaskRun`` to write
one, registered under the ``helios_hpo.tasks`` entry point.
"""

from service.tasks.registry import (
    ENTRY_POINT_GROUP,
    UnknownTaskError,
    all_tasks,
    get_task,
    register_task,
)
from service.tasks.task import Task, TaskRun

__all__ = [
    "ENTRY_POINT_GROUP",
    "Task",
    "TaskRun",
    "UnknownTaskError",
    "all_tasks",
    "get_task",
    "register_task",
]
