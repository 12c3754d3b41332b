"""Code written the way helios-ml's users write it runs unchanged.

The objective below makes its plug-in calls exactly as helios-ml's Optuna tutorial
does (the plug-in registered with ``configure_trainer``, the save name set with
``configure_model``, metrics reported by the model, ``fit`` raising
``TrialPruned``), its model computes ``metrics`` in a property and optimizes by
itself, and its data module skips ``super().__init__()`` and uses
``_create_dataset``. Only the data (generated) and the Trainer's arguments differ.
"""

from __future__ import annotations

import typing
from pathlib import Path

import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.plugins as hlp
import helios.trainer as hlt
from helios.checkpoint import find_checkpoints
from helios.plugins.optuna import OptunaPlugin

optuna.logging.set_verbosity(optuna.logging.WARNING)


class BlobsDataModule(hld.DataModule):
    def __init__(self, batch_size: int):  # no super().__init__(), as in the tutorial
        self._batch_size = batch_size

    def setup(self) -> None:
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(384, 8, generator=gen)
        y = (x @ torch.linspace(-1.0, 1.0, 8) > 0).long()
        params = hld.DataLoaderParams()
        params.batch_size = self._batch_size
        params.shuffle = True
        params.drop_last = True
        self._train_dataset = self._create_dataset(TensorDataset(x[:256], y[:256]), params)
        params.drop_last = False
        params.shuffle = False
        params.is_distributed = False
        self._valid_dataset = self._create_dataset(TensorDataset(x[256:], y[256:]), params)


class ClassifierModel(hlm.Model):
    def __init__(self) -> None:
        super().__init__("classifier")
        self.ended = False

    @property
    def metrics(self) -> dict[str, typing.Any]:
        if not self._val_scores or self._val_scores["total"] == 0:
            return {}
        return {"accuracy": self._val_scores["correct"] / self._val_scores["total"]}

    def setup(self, fast_init: bool = False) -> None:
        plugin = self.trainer.plugins[OptunaPlugin.plugin_id]
        assert isinstance(plugin, OptunaPlugin)
        assert plugin.trial is not None
        lr = plugin.trial.suggest_float("lr", 1e-4, 1.0, log=True)
        self._net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)).to(self.device)
        self._criterion = nn.CrossEntropyLoss()
        self._optimizer = torch.optim.SGD(self._net.parameters(), lr=lr, momentum=0.9)

    def load_state_dict(self, state_dict: dict[str, typing.Any], fast_init: bool = False) -> None:
        self._net.load_state_dict(state_dict["net"])
        self._optimizer.load_state_dict(state_dict["optimizer"])

    def state_dict(self) -> dict[str, typing.Any]:
        return {"net": self._net.state_dict(), "optimizer": self._optimizer.state_dict()}

    def train(self) -> None:
        self._net.train()

    def eval(self) -> None:
        self._net.eval()

    def train_step(self, batch: typing.Any, state: hlt.TrainingState) -> None:
        inputs, labels = batch
        self._optimizer.zero_grad()
        loss = self._criterion(self._net(inputs.to(self.device)), labels.to(self.device))
        loss.backward()
        self._optimizer.step()
        self._loss_items["loss"] = loss

    def on_validation_start(self, validation_cycle: int) -> None:
        self._val_scores["total"] = 0
        self._val_scores["correct"] = 0

    def valid_step(self, batch: typing.Any, step: int) -> None:
        images, labels = batch
        predicted = self._net(images.to(self.device)).argmax(dim=1)
        self._val_scores["total"] += labels.size(0)
        self._val_scores["correct"] += (predicted == labels).sum().item()

    def on_validation_end(self, validation_cycle: int) -> None:
        plugin = self.trainer.plugins[OptunaPlugin.plugin_id]
        assert isinstance(plugin, OptunaPlugin)
        plugin.report_metrics(validation_cycle)

    def on_training_end(self) -> None:
        self.ended = True


def _objective(root: Path, ended: dict[int, bool]) -> typing.Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        datamodule = BlobsDataModule(batch_size=16)
        model = ClassifierModel()
        plugin = OptunaPlugin(trial, "accuracy")

        trainer = hlt.Trainer(
            train_unit=hlt.TrainingUnit.EPOCH,
            total_steps=6,
            valid_frequency=1,
            chkpt_frequency=1,
            enable_progress_bar=False,
            chkpt_root=root / "chkpt",
        )

        plugin.configure_trainer(trainer)
        plugin.configure_model(model)
        try:
            trainer.fit(model, datamodule)
        finally:
            ended[trial.number] = model.ended
        plugin.check_pruned()

        if trainer.queue is None:
            return float(model.metrics["accuracy"])
        raise AssertionError("helios runs distributed under torchrun only")

    return objective


class StepPruner(optuna.pruners.BasePruner):
    """Prunes a trial whose accuracy at step 1 is below 0.8, and counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        self.calls += 1
        step = trial.last_step
        return step is not None and step >= 1 and trial.intermediate_values[step] < 0.8


def test_a_tutorial_style_objective_prunes_and_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports: list[tuple[int, int]] = []
    report = optuna.Trial.report

    def counted(self: optuna.Trial, value: float, step: int) -> None:
        reports.append((self.number, step))
        report(self, value, step)

    monkeypatch.setattr(optuna.Trial, "report", counted)
    pruner = StepPruner()
    storage = f"sqlite:///{tmp_path / 'classifier.db'}"
    study = optuna.create_study(direction="maximize", storage=storage, pruner=pruner)
    study.enqueue_trial({"lr": 0.05})  # learns
    study.enqueue_trial({"lr": 1e-4})  # stays near chance: pruned at cycle 1
    ended: dict[int, bool] = {}
    study.optimize(_objective(tmp_path, ended), n_trials=2)

    good, bad = optuna.load_study(study_name=study.study_name, storage=storage).trials
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert good.value is not None
    assert good.value > 0.8
    assert sorted(good.intermediate_values) == [0, 1, 2, 3, 4, 5]
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert sorted(bad.intermediate_values) == [0, 1]
    # One report and one pruning check per cycle: the model's report_metrics is not
    # repeated by the plug-in, and should_training_stop after each batch reads a flag.
    assert reports == [(0, c) for c in range(6)] + [(1, 0), (1, 1)]
    assert pruner.calls == 6 + 2
    # The pruned trial stopped cleanly: the model's end hook ran and the checkpoint of
    # the pruning boundary was written, under the save name configure_model set.
    assert ended == {0: True, 1: True}
    pruned_chkpts = find_checkpoints(tmp_path / "chkpt", "classifier_trial-1")
    assert [p.name for p in pruned_chkpts][-1].startswith("classifier_trial-1_epoch00002")


def test_optuna_plugin_surface_of_helios_ml(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    first, second = study.ask(), study.ask()
    plugin = OptunaPlugin(first, "accuracy")
    with pytest.raises(KeyError, match="unknown suggestion type 'uniform'"):
        plugin.suggest("uniform", "x", low=0, high=1)
    plugin.suggest("float", "x", low=0.0, high=1.0)
    plugin.suggest("categorical", "opt", choices=["sgd", "adam"])
    assert plugin.state_dict() == first.params  # what helios-ml's plug-in saves
    plugin.trial = second
    assert plugin.trial is second
    assert plugin.trial_number == second.number


def test_num_trials_stops_the_optimize_loop(tmp_path: Path) -> None:
    def objective(trial: optuna.Trial) -> float:
        plugin = OptunaPlugin(trial, "accuracy", num_trials=3)
        trainer = hlt.Trainer(total_steps=1, enable_progress_bar=False)
        plugin.configure_trainer(trainer)
        model = ClassifierModel()
        trainer.fit(model, BlobsDataModule(batch_size=64))
        return float(model.metrics["accuracy"])

    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=10)
    assert len(study.trials) == 3


def test_a_model_may_define_metrics_as_a_property() -> None:
    model = ClassifierModel()
    assert model.metrics == {}
    model._val_scores.update(total=4, correct=3)
    assert model.metrics == {"accuracy": 0.75}


def test_a_trainer_without_arguments_configures_plugins_and_refuses_to_fit() -> None:
    class ExceptionsOnly(hlp.Plugin):  # registers nothing, as helios-ml's tests write it
        def __init__(self, exc: type[Exception] | list[type[Exception]]) -> None:
            super().__init__(f"exception_{exc}")
            self._exc = exc

        def setup(self) -> None:
            pass

        def configure_trainer(self, t: hlt.Trainer) -> None:
            self._append_train_exceptions(self._exc, t)
            self._append_test_exceptions(self._exc, t)

    trainer = hlt.Trainer()
    ExceptionsOnly(RuntimeError).configure_trainer(trainer)
    ExceptionsOnly([ValueError, TypeError]).configure_trainer(trainer)
    assert trainer.train_exceptions == [RuntimeError, ValueError, TypeError]
    assert trainer.test_exceptions == [RuntimeError, ValueError, TypeError]
    assert trainer.plugins == {}
    with pytest.raises(ValueError, match="no total_steps"):
        trainer.fit(ClassifierModel(), BlobsDataModule(batch_size=64))


def test_setup_outside_a_trainer_stops_the_loop_at_num_trials(tmp_path: Path) -> None:
    def objective(trial: optuna.Trial) -> float:
        plugin = OptunaPlugin(trial, "accuracy", num_trials=4)
        plugin.setup()  # no trainer: helios-ml's tests call it so
        return trial.suggest_float("x", 0, 10) ** 2

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'n.db'}")
    study.optimize(objective, n_trials=10)
    assert len(study.trials) == 4
