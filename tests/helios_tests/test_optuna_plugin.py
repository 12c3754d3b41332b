from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest

from helios import Trainer
from helios.plugins.optuna import OptunaPlugin, distributions_from_space
from tests.helios_tests.boring import BoringData, BoringModel

optuna.logging.set_verbosity(optuna.logging.WARNING)


class CountingPruner(optuna.pruners.BasePruner):
    """Delegates to a real pruner and counts how often the trial asks it."""

    def __init__(self, inner: optuna.pruners.BasePruner) -> None:
        self.inner = inner
        self.calls = 0

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        self.calls += 1
        return self.inner.prune(study, trial)


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def _objective(epochs: int, chkpt_root: Path | None = None):  # type: ignore[no-untyped-def]
    def objective(trial: optuna.Trial) -> float:
        plugin = OptunaPlugin(trial, "accuracy")
        trainer = Trainer(
            total_steps=epochs,
            seed=5,
            plugins=[plugin],
            chkpt_root=chkpt_root,
            chkpt_frequency=1 if chkpt_root else None,
        )
        lr = plugin.suggest("float", "lr", low=0.0, high=1.0)
        model = BoringModel(lr=lr)
        trainer.fit(model, BoringData())
        plugin.check_pruned()
        trial.set_user_attr("validation_cycles", trainer.state.validation_cycles)
        trial.set_user_attr("batches", trainer.state.global_iteration)
        return model.metrics["accuracy"]

    return objective


def test_bad_trial_is_pruned_good_one_completes_one_check_per_cycle(tmp_path: Path) -> None:
    pruner = CountingPruner(optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0))
    study = optuna.create_study(storage=_sqlite(tmp_path), direction="maximize", pruner=pruner)
    study.enqueue_trial({"lr": 0.05})  # learns
    study.enqueue_trial({"lr": 0.0})  # stays at chance: pruned at the first cycle
    study.optimize(_objective(epochs=5), n_trials=2)

    # A fresh load sees what the workers wrote.
    good, bad = optuna.load_study(study_name=study.study_name, storage=_sqlite(tmp_path)).trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert good.value is not None
    assert good.value > 0.8
    assert sorted(good.intermediate_values) == [0, 1, 2, 3, 4]
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert sorted(bad.intermediate_values) == [0]

    cycles = good.user_attrs["validation_cycles"]
    assert cycles == 5
    assert good.user_attrs["batches"] == 40
    # One storage pruning check per validation cycle, none per batch.
    # The pruned trial has no user attrs: it raised before setting them.
    assert pruner.calls == cycles + len(bad.intermediate_values)


def test_save_name_gets_the_trial_number_once(tmp_path: Path) -> None:
    study = optuna.create_study(storage=_sqlite(tmp_path), direction="maximize")
    trial = study.ask()
    plugin = OptunaPlugin(trial, "accuracy")
    trainer = Trainer(total_steps=1, plugins=[plugin], seed=0)
    model = BoringModel(save_name="digits")
    trainer.fit(model, BoringData())
    trainer.test(model, BoringData())
    assert model.save_name == f"digits_trial-{trial.number}"


def test_resume_is_refused_with_other_parameters(tmp_path: Path) -> None:
    chkpts = tmp_path / "chkpts"

    def run(db: str, lr: float, epochs: int) -> Trainer:
        study = optuna.create_study(storage=f"sqlite:///{tmp_path / db}", direction="maximize")
        study.enqueue_trial({"lr": lr})
        trial = study.ask()
        plugin = OptunaPlugin(trial, "accuracy")
        trainer = Trainer(
            total_steps=epochs, plugins=[plugin], chkpt_root=chkpts, chkpt_frequency=1, seed=0
        )
        value = plugin.suggest("float", "lr", low=0.0, high=1.0)
        trainer.fit(BoringModel(lr=value), BoringData())
        return trainer

    run("a.db", 0.1, epochs=2)  # trial 0 of study a writes boring_trial-0 checkpoints
    with pytest.raises(ValueError, match=r"has parameters \{'lr': 0.1\}.*refusing to resume"):
        run("b.db", 0.2, epochs=4)  # trial 0 of study b, other parameters
    resumed = run("c.db", 0.1, epochs=4)  # same parameters: resumes at epoch 2
    assert resumed.state.global_epoch == 4
    assert resumed.state.global_iteration == 32
    assert resumed.state.validation_cycles == 4


def test_missing_metric_says_which_metrics_exist(tmp_path: Path) -> None:
    study = optuna.create_study(storage=_sqlite(tmp_path))
    plugin = OptunaPlugin(study.ask(), "f1")
    with pytest.raises(KeyError, match=r"reports metric 'f1'.*\['accuracy', 'best_accuracy'\]"):
        Trainer(total_steps=1, plugins=[plugin], seed=0).fit(BoringModel(), BoringData())


def test_multi_objective_trials_train_without_reports(tmp_path: Path) -> None:
    study = optuna.create_study(storage=_sqlite(tmp_path), directions=["maximize", "maximize"])
    trial = study.ask()
    plugin = OptunaPlugin(trial, ["accuracy", "best_accuracy"])
    model = BoringModel()
    Trainer(total_steps=2, plugins=[plugin], seed=0).fit(model, BoringData())
    plugin.check_pruned()
    study.tell(trial, [model.metrics["accuracy"], model.metrics["best_accuracy"]])
    (frozen,) = study.trials
    assert frozen.state == optuna.trial.TrialState.COMPLETE
    assert frozen.intermediate_values == {}


def test_suggest_all_takes_the_declarative_space(tmp_path: Path) -> None:
    space: dict[str, dict[str, Any]] = {
        "lr": {"type": "float", "low": 1e-5, "high": 0.3, "log": True},
        "hidden": {"type": "int", "low": 16, "high": 256, "step": 16},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    }
    study = optuna.create_study(storage=_sqlite(tmp_path))
    trial = study.ask()
    values = OptunaPlugin(trial, "accuracy").suggest_all(space)
    assert set(values) == {"lr", "hidden", "optimizer"}
    assert 1e-5 <= values["lr"] <= 0.3
    assert values["hidden"] % 16 == 0
    assert values["optimizer"] in ("adam", "sgd")
    assert trial.params == values
    assert distributions_from_space(space)["lr"] == optuna.distributions.FloatDistribution(
        1e-5, 0.3, log=True
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"type": "float", "low": 1.0, "high": 0.5}, "parameter 'p'"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "parameter 'p'"),
        ({"type": "int", "low": 0, "high": 10, "stepp": 2}, r"unknown keys \['stepp'\]"),
        ({"type": "categorical", "choices": "ab"}, "choices must be a list"),
        ({"type": "uniform", "low": 0, "high": 1}, "type must be one of"),
    ],
)
def test_bad_space_entries_name_the_parameter(entry: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distributions_from_space({"p": entry})


def test_unknown_suggestion_type(tmp_path: Path) -> None:
    plugin = OptunaPlugin(optuna.create_study().ask(), "accuracy")
    with pytest.raises(ValueError, match="unknown suggestion type 'uniform'"):
        plugin.suggest("uniform", "x", low=0, high=1)
