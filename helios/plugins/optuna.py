"""OptunaPlugin: suggest parameters, report a metric per validation cycle, prune.

Importing this module registers the plug-in; ``import helios`` does not, so
helios works without optuna installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import optuna

from helios import distributed
from helios.plugins.plugin import PLUGIN_REGISTRY, Plugin

if TYPE_CHECKING:
    from helios.model import Model
    from helios.trainer import Trainer

__all__ = ["OptunaPlugin", "SuggestionTypeError", "distributions_from_space"]

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


class SuggestionTypeError(ValueError, KeyError):
    """``OptunaPlugin.suggest`` got an unknown type (a ``KeyError``, as in helios-ml)."""

    def __str__(self) -> str:
        return str(self.args[0])


@PLUGIN_REGISTRY.register
class OptunaPlugin(Plugin):
    """Connects a training run to an Optuna trial.

    At the end of each validation cycle the plug-in reports the metric
    ``metric_name`` from the model's ``metrics`` (step = the cycle's index) and
    asks the pruner, once: a model may report itself from its
    ``on_validation_end`` with ``report_metrics(validation_cycle)``, and the
    cycle is then not reported twice. ``should_training_stop``, asked after
    every batch, answers from that decision. A pruned trial stops cleanly (the
    hooks run, a checkpoint due at that boundary is written) and ``fit`` then
    raises ``optuna.TrialPruned``; ``check_pruned()`` raises it too.

    With several metric names (a multi-objective study) nothing is reported,
    since Optuna cannot prune multi-objective trials. Any Optuna storage works.

    Under torchrun, rank 0 holds the trial (pass ``None`` on the other ranks):
    suggestions and pruning decisions are broadcast from it. Create the
    ``Trainer`` (which joins the process group) before calling ``suggest``.

    Args:
        trial: the trial to train, or None on ranks other than 0.
        metric_name: the metric to report, or the objectives' metrics.
        num_trials: when given, the trial numbered ``num_trials - 1`` stops the
            study's ``optimize`` loop after it.
        checkpoint_trial: the trial number put in the model's save name (default:
            this trial's); a retry passes its original's to resume its checkpoints.
    """

    plugin_id = "optuna"

    def __init__(
        self,
        trial: optuna.Trial | None,
        metric_name: str | Sequence[str],
        num_trials: int | None = None,
        *,
        checkpoint_trial: int | None = None,
    ) -> None:
        super().__init__(self.plugin_id)
        self.unique_overrides.should_training_stop = True
        self._metric_names = [metric_name] if isinstance(metric_name, str) else list(metric_name)
        if not self._metric_names:
            raise ValueError("metric_name must name at least one metric")
        self._num_trials = num_trials
        self._checkpoint_trial = checkpoint_trial
        self._params: dict[str, Any] = {}
        self._trial: optuna.Trial | None = None
        self._trial_number: int | None = None
        self.trial = trial
        self._cycle = 0  # the last validation cycle that ended
        self._pending = False  # a cycle ended and its pruning decision is not taken yet
        self._reported: int | None = None  # the cycle last reported
        self._pruned = False
        self.pruning_checks = 0

    @property
    def trial(self) -> optuna.Trial | None:
        """The trial (None on ranks other than 0 under torchrun)."""
        return self._trial

    @trial.setter
    def trial(self, trial: optuna.Trial | None) -> None:
        self._trial = trial
        self._trial_number = trial.number if trial is not None else None

    @property
    def params(self) -> dict[str, Any]:
        """The parameters suggested through this plug-in, on every rank."""
        return dict(self._params)

    @property
    def trial_number(self) -> int | None:
        """The trial's number, on every rank once registered in a trainer."""
        return self._trial_number

    def configure_trainer(self, trainer: Trainer) -> None:
        """Register, expect ``optuna.TrialPruned``, share the trial's number with every rank."""
        self._register_in_trainer(trainer)
        self._append_train_exceptions(optuna.TrialPruned, trainer)
        if trainer.rank == 0 and self._trial is None:
            raise ValueError("OptunaPlugin needs a trial on rank 0")
        numbers = (self._trial_number, self._save_name_number())
        self._trial_number, self._checkpoint_trial = distributed.broadcast_object(numbers)

    def configure_model(self, model: Model) -> None:
        """Append ``_trial-N`` to the model's save name, once: N is ``checkpoint_trial``,
        else this trial's number."""
        number = self._save_name_number()
        suffix = f"_trial-{number}"
        if number is not None and not model.save_name.endswith(suffix):
            model.save_name += suffix

    def _save_name_number(self) -> int | None:
        if self._checkpoint_trial is not None or self._trial is None:
            return self._checkpoint_trial
        return self._trial.number

    def setup(self) -> None:
        """Expect ``optuna.TrialPruned`` from ``fit``; stop ``optimize`` after ``num_trials``."""
        if self._trainer is not None:
            self._append_train_exceptions(optuna.TrialPruned, self._trainer)
        trial, last = self._trial, self._num_trials
        if last is not None and trial is not None and trial.number >= last - 1:
            trial.study.stop()

    def suggest(self, type_name: str, name: str, **kwargs: Any) -> Any:
        """Suggest one parameter: ``type_name`` is ``"float"``, ``"int"`` or ``"categorical"``.

        ``kwargs`` are those of ``trial.suggest_float/int/categorical``.

        Raises:
            SuggestionTypeError: an unknown ``type_name`` (a ``KeyError``).
        """
        suggesters = {
            "float": "suggest_float",
            "int": "suggest_int",
            "categorical": "suggest_categorical",
        }
        if type_name not in suggesters:
            raise SuggestionTypeError(
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
        """Forget the pruning decision of an earlier fit."""
        self._pruned = self._pending = False
        self._reported = None

    def on_validation_end(self, validation_cycle: int) -> None:
        """Note the cycle; its metric is read after the model's hook."""
        self._cycle = validation_cycle
        self._pending = True

    def report_metrics(self, validation_cycle: int) -> None:
        """Report the metric of ``validation_cycle`` now, from the model's ``on_validation_end``.

        A cycle is reported once; a model without the metric reports nothing.
        """
        if self._reported == validation_cycle or len(self._metric_names) != 1:
            return
        if self._metric_names[0] not in self.trainer.model.metrics:
            return
        self._report(validation_cycle)

    def should_training_stop(self) -> bool:
        """Whether the trial was pruned: decided once per validation cycle, on rank 0,
        and shared with every rank; after other batches, the last decision."""
        if self._pending:
            self._pending = False
            self._pruned = self._decide(self._cycle)
        return self._pruned

    def on_training_end(self) -> None:
        """Raise ``optuna.TrialPruned`` (from ``fit``) when the trial was pruned."""
        self.check_pruned()

    def check_pruned(self) -> None:
        """Raise ``optuna.TrialPruned`` when training stopped because the trial was pruned."""
        if self._pruned:
            raise optuna.TrialPruned(
                f"trial {self._trial_number} pruned at validation cycle {self._cycle}"
            )

    def state_dict(self) -> dict[str, Any]:
        """The trial's parameters, so a resume can be checked."""
        return self._current_params()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Refuse a checkpoint written by a trial with other parameters."""
        saved = dict(state_dict)
        if set(saved) == {"trial_number", "params"} and isinstance(saved["params"], Mapping):
            saved = dict(saved["params"])  # written by an earlier version of this plug-in
        current = self._current_params()
        other = {k: v for k, v in current.items() if k not in saved or saved[k] != v}
        if saved and other:
            raise ValueError(
                f"checkpoint of trial {self._checkpoint_trial} has parameters {saved}, this "
                f"trial has {current}; refusing to resume from it: use another chkpt_root "
                "or delete the checkpoint"
            )

    def _current_params(self) -> dict[str, Any]:
        if self._trial is not None:
            return dict(self._trial.params)
        return dict(self._params)

    def _decide(self, cycle: int) -> bool:
        decision = False
        if self._trial is not None and self.trainer.rank == 0 and len(self._metric_names) == 1:
            if self._reported != cycle:
                self._report(cycle)
            self.pruning_checks += 1
            decision = self._trial.should_prune()
        return bool(distributed.broadcast_object(decision))

    def _report(self, cycle: int) -> None:
        if self._trial is not None and self.trainer.rank == 0:
            self._trial.report(self._metric_value(), step=cycle)
        self._reported = cycle

    def _metric_value(self) -> float:
        name = self._metric_names[0]
        metrics = self.trainer.model.metrics
        if name not in metrics:
            raise KeyError(
                f"OptunaPlugin reports metric {name!r}, but the model's metrics after "
                f"validation are {sorted(metrics)}; set model.metrics[{name!r}] in "
                "on_validation_end"
            )
        return float(metrics[name])
