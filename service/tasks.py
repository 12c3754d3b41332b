"""Task registry: what a worker may train.

A request names a registered task; it never names a module to import. Teams
add tasks through the ``helios_hpo.tasks`` entry-point group: each entry point
names a ``Task`` object (see README, "Adding a task").
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helios import DataModule, Model

__all__ = [
    "DIGITS",
    "ENTRY_POINT_GROUP",
    "SYNTHETIC",
    "Task",
    "TaskRun",
    "UnknownTaskError",
    "all_tasks",
    "get_task",
    "register_task",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "helios_hpo.tasks"


@dataclasses.dataclass
class TaskRun:
    """What a task builds for one trial: the model, the data and the trainer's arguments."""

    model: Model
    datamodule: DataModule
    trainer_args: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Task:
    """A trainable task.

    Attributes:
        name: what a study spec names.
        description: one line for ``GET /tasks``.
        metrics: the metrics its model puts in ``model.metrics`` at validation.
        default_objectives: ``[{"metric": ..., "direction": ...}]``.
        default_search_space: the JSON search space used when a spec has none.
        default_task_args: the accepted ``task_args`` with their defaults; a
            spec's value must have the same type.
        default_params: the value of each parameter a study does not search;
            its keys are the parameters the task accepts.
        build: ``(params, task_args) -> TaskRun``; imports torch lazily. It gets
            every parameter: the trial's, and the defaults of the rest.
        task_arg_ranges: ``name -> (low, high)``, the inclusive bounds of numeric
            ``task_args`` (None: unbounded on that side); a spec outside them is refused.
        param_types: ``name -> float | int | str | bool | object`` for parameters whose
            type is not their default's (``object``: any value); a spec searching values
            of another type is refused.
        supports_ddp: whether its model trains correctly on several ranks (it wraps its
            networks in ``DistributedDataParallel`` when ``is_distributed``, and its
            metrics agree across ranks); a spec asking ``ranks_per_trial > 1`` of a task
            that does not is refused.
    """

    name: str
    description: str
    metrics: tuple[str, ...]
    default_objectives: tuple[Mapping[str, str], ...]
    default_search_space: Mapping[str, Mapping[str, Any]]
    default_task_args: Mapping[str, Any]
    default_params: Mapping[str, Any]
    build: Callable[[dict[str, Any], dict[str, Any]], TaskRun]
    task_arg_ranges: Mapping[str, tuple[float | None, float | None]] = dataclasses.field(
        default_factory=dict
    )
    param_types: Mapping[str, type] = dataclasses.field(default_factory=dict)
    supports_ddp: bool = False

    def load_model(self, path: str | Path, device: str = "cpu") -> TaskRun:
        """A model file the service stored (``helios-hpo model``, ``GET .../best/model``)
        back in this task's model: built with the file's parameters and task arguments,
        its networks loaded on ``device`` and in evaluation mode; ``run.model.metrics``
        holds the metrics its trial reported.

        Raises:
            ValueError: the file is not a helios-hpo model of this task.
        """
        import torch

        from helios import Trainer
        from service.artifacts import MODEL_FORMAT

        try:
            saved = torch.load(path, map_location=device, weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path} is not a helios-hpo model file: {exc}") from None
        if not isinstance(saved, dict) or saved.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path} is not a helios-hpo model file ({MODEL_FORMAT})")
        if saved["task"] != self.name:
            raise ValueError(f"{path} holds a model of task {saved['task']!r}, not {self.name!r}")
        run = self.build(dict(saved["params"]), dict(saved["task_args"]))
        run.model.trainer = Trainer(device=device, enable_progress_bar=False)
        run.model.setup()
        modules = run.model.modules()
        if set(modules) != set(saved["modules"]):
            raise ValueError(
                f"{path} holds networks {sorted(saved['modules'])}; the task's model has "
                f"{sorted(modules)}"
            )
        for name, module in modules.items():
            module.load_state_dict(saved["modules"][name])
        run.model.metrics.update(saved["metrics"])
        run.model.eval()
        return run

    def param_type(self, name: str) -> type:
        """The type parameter ``name`` takes: declared, else its default's (None: any)."""
        if name in self.param_types:
            return self.param_types[name]
        default = self.default_params.get(name)
        return object if default is None else type(default)

    def task_arg_error(self, name: str, value: Any) -> str | None:
        """Why ``value`` cannot be task argument ``name``, or None when it can."""
        if name not in self.default_task_args:
            accepted = sorted(self.default_task_args)
            return f"unknown argument for task {self.name!r}; accepted: {accepted}"
        default = self.default_task_args[name]
        if not _same_kind(value, default):
            return f"must be {type(default).__name__}, got {value!r}"
        low, high = self.task_arg_ranges.get(name, (None, None))
        if low is not None and value < low:
            return f"must be >= {low}, got {value!r}"
        if high is not None and value > high:
            return f"must be <= {high}, got {value!r}"
        return None


def _same_kind(value: Any, default: Any) -> bool:
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, type(default))


class UnknownTaskError(KeyError):
    """No task of that name is registered."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown task {self.name!r}; registered tasks: {', '.join(self.known) or 'none'}"


_TASKS: dict[str, Task] = {}
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


# -- built-in tasks -----------------------------------------------------------


def _build_digits(params: dict[str, Any], task_args: dict[str, Any]) -> TaskRun:
    from service._builtin_tasks import DigitsData, DigitsModel

    model = DigitsModel(
        lr=float(params["lr"]),
        hidden=int(params["hidden"]),
        dropout=float(params["dropout"]),
        optimizer=str(params["optimizer"]),
        momentum=float(params["momentum"]),
        betas=(float(params["beta1"]), float(params["beta2"])),
    )
    data = DigitsData(
        batch_size=int(params["batch_size"]), valid_fraction=task_args["valid_fraction"]
    )
    return TaskRun(model, data, {"total_steps": task_args["epochs"], "valid_frequency": 1})


DIGITS = register_task(
    Task(
        name="digits",
        description="An MLP on scikit-learn's bundled 8x8 digits images (1,797 samples).",
        metrics=("accuracy", "loss"),
        default_objectives=({"metric": "accuracy", "direction": "maximize"},),
        default_search_space={
            "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
            "hidden": {"type": "int", "low": 16, "high": 256, "step": 16},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128]},
            # Searched only for the optimizer that uses them.
            "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["sgd"]}},
            "beta1": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optimizer": ["adam"]}},
            "beta2": {
                "type": "float",
                "low": 0.99,
                "high": 0.9999,
                "when": {"optimizer": ["adam"]},
            },
        },
        default_task_args={"epochs": 10, "valid_fraction": 0.2},
        task_arg_ranges={"epochs": (1, 100_000), "valid_fraction": (0.05, 0.95)},
        default_params={
            "lr": 0.01,
            "hidden": 128,
            "dropout": 0.1,
            "optimizer": "adam",
            "batch_size": 32,
            "momentum": 0.9,
            "beta1": 0.9,
            "beta2": 0.999,
        },
        build=_build_digits,
        supports_ddp=True,
    )
)


def _build_synthetic(params: dict[str, Any], task_args: dict[str, Any]) -> TaskRun:
    from service._builtin_tasks import SyntheticData, SyntheticModel

    model = SyntheticModel(
        params,
        sleep_s=task_args["sleep_s"],
        exit_code=task_args["exit_code"],
        fail=task_args["fail"],
        state_bytes=task_args["state_bytes"],
    )
    data = SyntheticData(batches=task_args["batches_per_epoch"])
    # A model without state has nothing to resume: no checkpoints.
    chkpt_frequency = 1 if task_args["state_bytes"] else None
    return TaskRun(
        model,
        data,
        {
            "total_steps": task_args["epochs"],
            "valid_frequency": 1,
            "chkpt_frequency": chkpt_frequency,
        },
    )


SYNTHETIC = register_task(
    Task(
        name="synthetic",
        description="A quadratic bowl that 'trains' in microseconds: for tests and benchmarks.",
        metrics=("loss", "score", "cost"),
        default_objectives=({"metric": "loss", "direction": "minimize"},),
        default_search_space={
            "x": {"type": "float", "low": -10.0, "high": 10.0},
            "y": {"type": "int", "low": -10, "high": 10},
        },
        # exit_code != 0 makes the worker process die in the first batch (crash tests);
        # fail raises an error there (the trial fails, the worker lives).
        default_task_args={
            "epochs": 10,
            "batches_per_epoch": 1,
            "sleep_s": 0.0,
            "exit_code": 0,
            "fail": False,
            "state_bytes": 0,  # a network of this size: checkpoints and stored models
        },
        task_arg_ranges={
            "epochs": (1, 100_000),
            "batches_per_epoch": (1, 100_000),
            "sleep_s": (0.0, 3600.0),
            "exit_code": (0, 255),
            "state_bytes": (0, 1 << 30),
        },
        default_params={"x": 0.0, "y": 0, "kind": "bowl", "z": 0.0},
        build=_build_synthetic,
        supports_ddp=True,  # nothing to synchronise: every rank computes the same metrics
    )
)
