"""OptunaPlugin: suggest parameters, report a metric per validation cycle, prune.

Importing this module registers the plug-in; ``import helios`` does not, so
helios works without optuna installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna

from helios import distributed
from helios.plugins.plugin import Plugin

if TYPE_CHECKING:
    from helios.model import Model
    from helios.trainer import Trainer

__all__ = ["OptunaPlugin", "distributions_from_space"]

# JSON search-space entry keys accepted per type, besides "type".
_SPACE_KEYS = {
    "float": {"low", "high", "step", "log"},
    "int": {"low", "high", "step", "log"},
    "categorical": {"choices"},
}


def distributions_from_space(
    space: Mapping[str, Mapping[str, Any]],
) -> dict[str, optuna.distributions.BaseDistribution]:
    """Build Optuna distributions from a declarative search space.

    ``{"lr": {"type": "float", "low": 1e-5, "high": 0.1, "log": true},
    "hidden": {"type": "int", "low": 16, "high": 256, "step": 16},
    "opt": {"type": "categorical", "choices": ["adam", "sgd"]}}``

    Raises:
        ValueError: naming the parameter and what is wrong with it.
    """
    return {name: _distribution(name, entry) for name, entry in space.items()}


def _distribution(name: str, entry: Mapping[str, Any]) -> optuna.distributions.BaseDistribution:
    kind = entry.get("type")
    if kind not in _SPACE_KEYS:
        raise ValueError(
            f"parameter {name!r}: type must be one of {sorted(_SPACE_KEYS)}, got {kind!r}"
        )
    args = {key: value for key, value in entry.items() if key != "type"}
    unknown = set(args) - _SPACE_KEYS[kind]
    if unknown:
        raise ValueError(
            f"parameter {name!r}: unknown keys {sorted(unknown)} for type {kind!r}; "
            f"allowed: {sorted(_SPACE_KEYS[kind])}"
        )
    try:
        if kind == "float":
            return optuna.distributions.FloatDistribution(**args)
        if kind == "int":
            return optuna.distributions.IntDistribution(**{"step": 1, **args})
        choices = args.get("choices")
        if not isinstance(choices, list | tuple):
            raise ValueError("choices must be a list")
        return optuna.distributions.CategoricalDistribution(choices)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"parameter {name!r}: {exc}") from None


class OptunaPlugin(Plugin):
    """Connects a training run to an Optuna trial.

    The plug-in reports the metric ``metric_name`` from ``model.metrics`` once
    per validation cycle (step = the cycle's index) and asks the pruner then,
    never per batch. When the trial is pruned training stops cleanly;
    call ``check_pruned()`` after ``fit`` to raise ``optuna.TrialPruned``.

    With several metric names (a multi-objective study) nothing is reported,
    since Optuna cannot prune multi-objective trials.

    Under torchrun, rank 0 holds the trial (pass ``None`` on the other ranks):
    suggestions and pruning decisions are broadcast from it. Create the
    ``Trainer`` (which joins the process group) before calling ``suggest``.

    Args:
        trial: the trial to train, or None on ranks other than 0.
        metric_name: the metric to report, or the objectives' metrics.
        checkpoint_trial: the trial number put in the model's save name (default:
            this trial's); a retry passes its original's to resume its checkpoints.
    """

    plugin_id = "optuna"

    def __init__(
        self,
        trial: optuna.Trial | None,
        metric_name: str | Sequence[str],
        *,
        checkpoint_trial: int | None = None,
    ) -> None:
        super().__init__(self.plugin_id)
        self.unique_overrides.should_training_stop = True
        self._trial = trial
        self._metric_names = [metric_name] if isinstance(metric_name, str) else list(metric_name)
        if not self._metric_names:
            raise ValueError("metric_name must name at least one metric")
        self._params: dict[str, Any] = {}
        self._trial_number = trial.number if trial is not None else None
        self._checkpoint_trial = checkpoint_trial
        self._model: Model | None = None
        self._cycle = 0
        self._pruned = False
        self.pruning_checks = 0

    @property
    def trial(self) -> optuna.Trial | None:
        """The trial (None on ranks other than 0 under torchrun)."""
        return self._trial

    @property
    def params(self) -> dict[str, Any]:
        """The parameters suggested through this plug-in, on every rank."""
        return dict(self._params)

    @property
    def trial_number(self) -> int | None:
        """The trial's number, on every rank once attached to a trainer."""
        return self._trial_number

    def configure_trainer(self, trainer: Trainer) -> None:
        """Attach, and share the trial number with every rank."""
        super().configure_trainer(trainer)
        if trainer.rank == 0 and self._trial is None:
            raise ValueError("OptunaPlugin needs a trial on rank 0")
        self._trial_number = distributed.broadcast_object(self._trial_number)

    def configure_model(self, model: Model) -> None:
        """Append the trial number (or ``checkpoint_trial``) to the model's save name, once."""
        self._model = model
        number = (
            self._checkpoint_trial if self._checkpoint_trial is not None else self._trial_number
        )
        suffix = f"_trial-{number}"
        if number is not None and not model.save_name.endswith(suffix):
            model.save_name += suffix

    def setup(self) -> None:
        """Nothing to prepare."""

    def suggest(self, type_name: str, name: str, **kwargs: Any) -> Any:
        """Suggest one parameter: ``type_name`` is ``"float"``, ``"int"`` or ``"categorical"``.

        ``kwargs`` are those of ``trial.suggest_float/int/categorical``.
        """
        suggesters = {
            "float": "suggest_float",
            "int": "suggest_int",
            "categorical": "suggest_categorical",
        }
        if type_name not in suggesters:
            raise ValueError(
                f"unknown suggestion type {type_name!r}; use one of {sorted(suggesters)}"
            )
        value = None
        if self._trial is not None:
            value = getattr(self._trial, suggesters[type_name])(name, **kwargs)
        value = distributed.broadcast_object(value)
        self._params[name] = value
        return value

    def suggest_all(self, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """Suggest every parameter of a declarative space (see ``distributions_from_space``)."""
        distributions_from_space(space)  # refuse a bad space before suggesting anything
        values = {}
        for name, entry in space.items():
            args = {key: value for key, value in entry.items() if key != "type"}
            values[name] = self.suggest(entry["type"], name, **args)
        return values

    def on_training_start(self) -> None:
        """Forget a pruning decision of an earlier fit."""
        self._pruned = False

    def on_validation_end(self, validation_cycle: int) -> None:
        """Remember the cycle; its metric is read after the model's hook."""
        self._cycle = validation_cycle

    def should_training_stop(self) -> bool:
        """Report this cycle's metric and decide pruning, on rank 0; broadcast the decision."""
        decision = False
        if self._trial is not None and self.rank == 0 and len(self._metric_names) == 1:
            self._trial.report(self._metric_value(), step=self._cycle)
            self.pruning_checks += 1
            decision = self._trial.should_prune()
        self._pruned = bool(distributed.broadcast_object(decision))
        return self._pruned

    def check_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` when training stopped because the trial was pruned."""
        if self._pruned:
            raise optuna.TrialPruned(
                f"trial {self._trial_number} pruned at validation cycle {self._cycle}"
            )

    def state_dict(self) -> dict[str, Any]:
        """The trial's number and parameters, so a resume can be checked."""
        return {"trial_number": self._trial_number, "params": self._current_params()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Refuse a checkpoint written by a trial with other parameters."""
        if not state_dict:
            return
        saved, current = dict(state_dict["params"]), self._current_params()
        if saved != current:
            raise ValueError(
                f"checkpoint of trial {state_dict.get('trial_number')} has parameters {saved}, "
                f"this trial has {current}; refusing to resume from it: use another "
                "chkpt_root or delete the checkpoint"
            )

    def _current_params(self) -> dict[str, Any]:
        if self._trial is not None:
            return dict(self._trial.params)
        return dict(self._params)

    def _metric_value(self) -> float:
        name = self._metric_names[0]
        if self._model is None:
            raise RuntimeError("OptunaPlugin has no model: the trainer calls configure_model first")
        metrics = self._model.metrics
        if name not in metrics:
            raise KeyError(
                f"OptunaPlugin reports metric {name!r}, but the model's metrics after "
                f"validation are {sorted(metrics)}; set model.metrics[{name!r}] in "
                "on_validation_end"
            )
        return float(metrics[name])
