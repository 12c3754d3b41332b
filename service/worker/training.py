"""One trial's training: the task's Trainer, its checkpoints, its stored model."""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from service.settings import Settings
from service.spec.conditions import suggest_space
from service.spec.models import StudySpec
from service.tasks.registry import get_task
from service.tasks.task import Task, TaskRun

if TYPE_CHECKING:
    from helios import Trainer
    from service.artifacts.store import ModelStore

__all__ = ["trial_checkpoint_dir", "trial_seed"]

log = logging.getLogger(__name__)


def trial_checkpoint_dir(data_dir: Path, study: str, trial_number: int) -> Path:
    """Where trial ``trial_number`` of ``study`` keeps its checkpoints."""
    return data_dir / "studies" / study / "trials" / str(trial_number)


def trial_seed(params: dict[str, Any]) -> int:
    """A seed derived from the parameters: the same parameters train the same way."""
    return zlib.crc32(json.dumps(params, sort_keys=True, default=str).encode())


class Training:
    """What every rank needs to train a study's trials; rank 0 alone holds the trial."""

    def __init__(self, study_name: str, spec: StudySpec, settings: Settings) -> None:
        self.name, self.spec, self.settings = study_name, spec, settings
        self.task: Task = get_task(spec.task)
        self.metrics = [o.metric for o in spec.objectives or []]
        self.space = {
            name: param.model_dump(exclude_none=True)
            for name, param in (spec.search_space or {}).items()
        }
        self.trainer: Trainer | None = None  # the trial's, while it trains
        self._models: ModelStore | None = None
        self.trials_started = 0

    def train(self, trial: optuna.Trial | None, origin: int) -> list[float]:
        """Train one trial (``trial`` None on ranks other than 0); its objective values.

        Raises:
            optuna.TrialPruned: on every rank, when rank 0's pruner stopped it.
        """
        import torch

        from helios import CUDAPlugin, Plugin, Trainer
        from helios.plugins.optuna import OptunaPlugin

        metric = self.metrics[0] if len(self.metrics) == 1 else self.metrics
        plugin = OptunaPlugin(trial, metric, checkpoint_trial=origin)
        plugins: list[Plugin] = [plugin]
        if torch.cuda.is_available():
            plugins.append(CUDAPlugin())
        if not self.trials_started:
            device = torch.cuda.get_device_name() if torch.cuda.is_available() else "the CPU"
            log.info("training on %s", device)
        self.trials_started += 1
        # Rank 0's suggestions reach the others through the process group it joined.
        params = {**self.task.default_params, **suggest_space(plugin.suggest, self.space)}
        run = self.task.build(params, dict(self.spec.task_args))
        trainer_args = {"chkpt_frequency": 1, "keep_last_checkpoints": 1, **run.trainer_args}
        trainer = Trainer(
            **trainer_args,
            chkpt_root=trial_checkpoint_dir(self.settings.data_dir, self.name, origin),
            seed=trial_seed(params),
            enable_progress_bar=False,
            plugins=plugins,
        )
        self.trainer = trainer
        try:
            trainer.fit(run.model, run.datamodule)  # raises optuna.TrialPruned when pruned
        except optuna.TrialPruned:
            if trial is not None:
                _note_resume(trial, trainer)
            raise
        finally:
            self.trainer = None
        if trial is None:
            return []
        _note_resume(trial, trainer)
        constrained = [c.metric for c in self.spec.constraints]
        missing = [m for m in [*self.metrics, *constrained] if m not in run.model.metrics]
        if missing:
            raise KeyError(f"the model produced no {missing}; metrics: {sorted(run.model.metrics)}")
        # Before the trial is told: Optuna's samplers and best trial read these.
        for constraint in self.spec.constraints:
            value = float(run.model.metrics[constraint.metric])
            for key, violation in constraint.violations(value).items():
                trial.set_constraint(key, violation)
        values = [float(run.model.metrics[m]) for m in self.metrics]
        if self.spec.artifacts.keep != "none":
            self._store_model(trial, run, params, values)
        return values

    @property
    def models(self) -> ModelStore:
        """Where models are stored (made at first use: an S3 client costs a little)."""
        if self._models is None:
            from service.artifacts.store import ModelStore

            self._models = ModelStore.of(self.settings)
        return self._models

    def _store_model(
        self, trial: optuna.Trial, run: TaskRun, params: dict[str, Any], values: list[float]
    ) -> None:
        """The trained networks, as an artifact of the trial (before it is told)."""
        from service.artifacts.store import save_model

        about = {
            "task": self.task.name,
            "study": self.name,
            "trial": trial.number,
            "params": params,
            "task_args": {**self.task.default_task_args, **self.spec.task_args},
            "values": values,
            "metrics": {
                k: float(v) for k, v in run.model.metrics.items() if isinstance(v, int | float)
            },
        }
        modules = {name: m.state_dict() for name, m in run.model.modules().items()}
        artifact_id = save_model(trial, modules, about, self.models)
        log.info("model stored: artifact %s", artifact_id)


def _note_resume(trial: optuna.Trial, trainer: Trainer) -> None:
    """A retry that continued from a checkpoint says so."""
    if trainer.resumed_from:
        start = trainer.resumed_from.epochs_completed
        trial.set_user_attr("resumed_from_epoch", start)
        trial.set_user_attr("epochs_trained", trainer.state.epochs_completed - start)
