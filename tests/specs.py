"""Study specs of the built-in ``synthetic`` task, as tests write them."""

from __future__ import annotations

import random
from typing import Any

import optuna
from optuna.trial import TrialState

__all__ = ["ask_synthetic", "end_at_random", "synthetic"]

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


def ask_synthetic(study: optuna.Study) -> optuna.Trial:
    """A trial of the synthetic task's space (x, y), asked of Optuna directly."""
    trial = study.ask()
    trial.suggest_float("x", -10, 10)
    trial.suggest_int("y", -10, 10)
    return trial


def end_at_random(
    study: optuna.Study, trial: optuna.Trial, rng: random.Random, value: float
) -> None:
    """Tell ``trial`` COMPLETE with ``value`` (60%), PRUNED (20%) or FAIL (20%)."""
    end = rng.random()
    if end < 0.6:
        study.tell(trial, value)
    elif end < 0.8:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)
