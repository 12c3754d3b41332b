"""Study specs of the built-in ``synthetic`` task, as tests write them."""

from __future__ import annotations

from typing import Any

__all__ = ["synthetic"]

_TASK_ARGS = ("epochs", "sleep_s", "exit_code", "fail", "state_bytes")
_WORKERS = ("gpus_per_worker", "launcher", "image")


def synthetic(
    name: str, *, workers: int | dict[str, Any] | None = None, **fields: Any
) -> dict[str, Any]:
    """A spec of the synthetic task named ``name``.

    ``epochs``, ``sleep_s``, ``exit_code``, ``fail`` and ``state_bytes`` go into ``task_args``;
    ``workers`` (the count, or the whole ``workers`` mapping), ``gpus_per_worker``,
    ``launcher`` and ``image`` into ``workers``; every other field is the spec's own.
    """
    spec: dict[str, Any] = {"name": name, "task": "synthetic"}
    task_args = {k: fields.pop(k) for k in _TASK_ARGS if k in fields}
    worker_fields = {k: fields.pop(k) for k in _WORKERS if k in fields}
    if isinstance(workers, dict):
        worker_fields = {**workers, **worker_fields}
    elif workers is not None:
        worker_fields = {"count": workers, **worker_fields}
    spec.update(fields)
    if task_args:
        spec["task_args"] = {**spec.get("task_args", {}), **task_args}
    if worker_fields:
        spec["workers"] = {**spec.get("workers", {}), **worker_fields}
    return spec
