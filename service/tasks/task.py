"""What a task is: how a trial's parameters become a helios Trainer's model and data."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from helios import DataModule, Model

__all__ = ["Task", "TaskRun"]


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
        from service.artifacts.store import MODEL_FORMAT

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
