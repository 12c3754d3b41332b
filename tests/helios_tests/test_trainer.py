from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helios import Trainer, TrainingUnit
from helios.checkpoint import find_checkpoints, load_checkpoint
from tests.helios_tests.boring import BoringData, BoringModel, RecordingModel, RecordingPlugin

TRAIN_BATCH = [
    "plugin.process_training_batch",
    "model.on_training_batch_start",
    "model.train_step",
    "model.on_training_batch_end",
    "plugin.should_training_stop",  # every plug-in and the model, after every batch
    "model.should_training_stop",
]


def _validation(cycle: int) -> list[str]:
    return [
        f"plugin.on_validation_start({cycle})",
        f"model.on_validation_start({cycle})",
        "plugin.process_validation_batch",
        "model.on_validation_batch_start(0)",
        "model.valid_step",
        "model.on_validation_batch_end(0)",
        f"plugin.on_validation_end({cycle})",
        f"model.on_validation_end({cycle})",
        "model.have_metrics_improved",
        "plugin.should_training_stop",
        "model.should_training_stop",
    ]


def test_hook_order_of_fit_then_test() -> None:
    calls: list[str] = []
    trainer = Trainer(total_steps=2, seed=0, plugins=[RecordingPlugin(calls)])
    model = RecordingModel(calls)
    data = BoringData(n_train=16, n_valid=8, batch_size=8, calls=calls)  # 2 train, 1 valid batch

    trainer.fit(model, data)
    epoch = [
        *TRAIN_BATCH,
        *TRAIN_BATCH,
    ]
    assert calls == [
        "plugin.configure_model",
        "plugin.setup",  # plug-ins before the data, as in helios-ml
        "data.setup",
        "model.setup",
        "plugin.on_training_start",
        "model.on_training_start",
        "model.on_training_epoch_start(1)",  # state.global_epoch, from 1 as in helios-ml
        *epoch,
        "model.on_training_epoch_end(1)",
        *_validation(0),
        "model.on_training_epoch_start(2)",
        *epoch,
        "model.on_training_epoch_end(2)",
        *_validation(1),
        "plugin.on_training_end",
        "model.on_training_end",
    ]

    calls.clear()
    metrics = trainer.test(model, data)
    assert calls == [
        "plugin.configure_model",
        "plugin.setup",  # the fitted model is not set up again
        "data.setup",
        "plugin.on_testing_start",
        "model.on_testing_start",
        "plugin.process_testing_batch",
        "model.test_step",
        "plugin.on_testing_end",
        "model.on_testing_end",
    ]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0


def test_iteration_unit_validates_every_n_optimizer_steps() -> None:
    calls: list[str] = []
    trainer = Trainer(
        total_steps=5,
        train_unit="iteration",
        valid_frequency=2,
        seed=0,
        plugins=[RecordingPlugin(calls)],
    )
    state = trainer.fit(RecordingModel(calls), BoringData(n_train=24, n_valid=8, batch_size=8))
    assert (state.current_iteration, state.global_iteration) == (5, 5)
    # 3 batches per epoch: epoch 1 done, epoch 2 partial (2 batches into it)
    assert (state.global_epoch, state.epochs_completed, state.dataset_iter) == (2, 1, 2)
    assert calls.count("model.train_step") == 5
    assert [c for c in calls if c.startswith("model.on_validation_start")] == [
        "model.on_validation_start(0)",
        "model.on_validation_start(1)",
    ]
    assert calls.count("model.on_training_epoch_end(1)") == 1
    assert "model.on_training_epoch_end(2)" not in calls


def test_gradient_accumulation_steps_once_per_n_batches() -> None:
    class CountingSteps(BoringModel):
        def setup(self) -> None:
            super().setup()
            self.steps = 0
            self.optimizer.register_step_post_hook(lambda *_: self._count())

        def _count(self) -> None:
            self.steps += 1

    model = CountingSteps()
    trainer = Trainer(total_steps=2, accumulation_steps=4, valid_frequency=None, seed=0)
    state = trainer.fit(model, BoringData(n_train=64, batch_size=8))  # 8 batches per epoch
    assert (state.global_iteration, state.current_iteration, model.steps) == (16, 4, 4)


def test_gradient_accumulation_matches_a_larger_batch() -> None:
    # Without dropout or shuffling, 2 accumulated batches of 8 == 1 batch of 16.
    def run(batch_size: int, accumulate: int) -> list[torch.Tensor]:
        model = BoringModel(lr=0.05, dropout=0.0)
        data = BoringData(n_train=32, batch_size=batch_size, shuffle=False)
        Trainer(total_steps=1, accumulation_steps=accumulate, valid_frequency=None, seed=3).fit(
            model, data
        )
        return model.weights()

    for a, b in zip(run(16, 1), run(8, 2), strict=True):
        torch.testing.assert_close(a, b)


def test_early_stop_after_cycles_without_improvement() -> None:
    class NeverImproves(BoringModel):
        def have_metrics_improved(self) -> bool:
            return False

    trainer = Trainer(total_steps=20, early_stop_cycles=3, seed=0)
    state = trainer.fit(NeverImproves(), BoringData())
    assert state.stopped_early
    assert state.validation_cycles == 3
    assert state.global_epoch == 3


def test_model_can_stop_training() -> None:
    class StopsAtSecondCycle(BoringModel):
        def should_training_stop(self) -> bool:
            return self.trainer.state.validation_cycles >= 2

    state = Trainer(total_steps=10, seed=0).fit(StopsAtSecondCycle(), BoringData())
    assert (state.global_epoch, state.validation_cycles, state.stopped_early) == (2, 2, True)


def test_fit_propagates_exceptions_with_traceback() -> None:
    trainer = Trainer(total_steps=2, seed=0)
    with pytest.raises(RuntimeError, match="simulated crash at batch 3") as info:
        trainer.fit(BoringModel(fail_at=3), BoringData())
    assert info.traceback[-1].name == "train_step"


def test_loss_without_optimizers_is_a_clear_error() -> None:
    class NoOptimizers(BoringModel):
        def setup(self) -> None:
            super().setup()
            self.optimizers = []

    with pytest.raises(ValueError, match="model.optimizers is empty"):
        Trainer(total_steps=1, seed=0).fit(NoOptimizers(), BoringData())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"total_steps": 0}, "total_steps must be >= 1"),
        ({"total_steps": 1, "accumulation_steps": 0}, "accumulation_steps must be >= 1"),
        ({"total_steps": 1, "valid_frequency": 0}, "valid_frequency must be >= 1 or None"),
        ({"total_steps": 1, "chkpt_frequency": 1}, "chkpt_frequency needs chkpt_root"),
        ({"total_steps": 1, "precision": "fp8"}, "precision must be"),
        ({"total_steps": 1, "train_unit": "week"}, "'week' is not a valid TrainingUnit"),
    ],
)
def test_bad_trainer_arguments_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Trainer(**kwargs)  # type: ignore[arg-type]


def test_checkpoints_keep_last_n_plus_best(tmp_path: Path) -> None:
    class BestAtSecondEpoch(BoringModel):
        def have_metrics_improved(self) -> bool:
            return self.trainer.state.validation_cycles == 2  # cycles done, this one included

    trainer = Trainer(
        total_steps=6, chkpt_frequency=1, chkpt_root=tmp_path, keep_last_checkpoints=2, seed=0
    )
    state = trainer.fit(BestAtSecondEpoch(), BoringData())
    names = [p.name for p in find_checkpoints(tmp_path, "boring")]
    assert names == [
        "boring_epoch00002_iter0000000016.pth",  # best
        "boring_epoch00005_iter0000000040.pth",
        "boring_epoch00006_iter0000000048.pth",
    ]
    assert state.best_checkpoint == names[0]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    saved = load_checkpoint(tmp_path / names[-1], "cpu")
    assert saved["training_state"]["global_epoch"] == 6


def test_best_is_a_validated_checkpoint_never_a_later_one(tmp_path: Path) -> None:
    # Validation every 2 epochs, checkpoints every epoch: the one after the improving
    # validation trained on unvalidated and must not take the best's place.
    class BestAtFirstCycle(BoringModel):
        def have_metrics_improved(self) -> bool:
            return self.trainer.state.validation_cycles == 1

    trainer = Trainer(
        total_steps=5,
        valid_frequency=2,
        chkpt_frequency=1,
        chkpt_root=tmp_path,
        keep_last_checkpoints=1,
        seed=0,
    )
    state = trainer.fit(BestAtFirstCycle(), BoringData())
    names = [p.name for p in find_checkpoints(tmp_path, "boring")]
    assert names == [
        "boring_epoch00002_iter0000000016.pth",  # validated and improved: the best
        "boring_epoch00005_iter0000000040.pth",  # the last
    ]
    assert state.best_checkpoint == names[0]


def _uninterrupted(tmp_path: Path, **kwargs: object) -> BoringModel:
    model = BoringModel()
    Trainer(chkpt_root=tmp_path / "straight", seed=7, **kwargs).fit(  # type: ignore[arg-type]
        model, BoringData()
    )
    return model


def test_resume_after_crash_matches_uninterrupted_run_epochs(tmp_path: Path) -> None:
    kwargs = {"total_steps": 4, "chkpt_frequency": 1}
    reference = _uninterrupted(tmp_path, **kwargs)

    root = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        Trainer(chkpt_root=root, seed=7, **kwargs).fit(  # type: ignore[arg-type]
            BoringModel(fail_at=8 * 2 + 3), BoringData()
        )  # crashes in epoch 2, after the checkpoint of epoch 2
    resumed = BoringModel()
    trainer = Trainer(chkpt_root=root, seed=7, **kwargs)  # type: ignore[arg-type]
    state = trainer.fit(resumed, BoringData())

    assert resumed.batches_seen == 2 * 8  # epochs 2 and 3 only
    assert state.global_epoch == 4
    assert trainer.resumed_from is not None
    assert trainer.resumed_from.global_epoch == 2
    for a, b in zip(resumed.weights(), reference.weights(), strict=True):
        assert torch.equal(a, b)
    assert resumed.metrics == reference.metrics


def test_resume_mid_epoch_matches_uninterrupted_run(tmp_path: Path) -> None:
    kwargs = {
        "total_steps": 20,
        "train_unit": TrainingUnit.ITERATION,
        "chkpt_frequency": 3,
        "valid_frequency": 5,
    }
    reference = _uninterrupted(tmp_path, **kwargs)

    root = tmp_path / "crashed"
    with pytest.raises(RuntimeError):
        Trainer(chkpt_root=root, seed=7, **kwargs).fit(  # type: ignore[arg-type]
            BoringModel(fail_at=14), BoringData()
        )  # last checkpoint at iteration 12: epoch 1, 4 batches into it
    resumed = BoringModel()
    state = Trainer(chkpt_root=root, seed=7, **kwargs).fit(resumed, BoringData())  # type: ignore[arg-type]

    assert resumed.batches_seen == 20 - 12
    assert state.global_iteration == 20
    for a, b in zip(resumed.weights(), reference.weights(), strict=True):
        assert torch.equal(a, b)


def test_a_checkpoint_of_the_earlier_format_resumes_mid_epoch(tmp_path: Path) -> None:
    kwargs = {"total_steps": 20, "train_unit": TrainingUnit.ITERATION, "chkpt_frequency": 3}
    reference = _uninterrupted(tmp_path, **kwargs)
    root = tmp_path / "old"
    with pytest.raises(RuntimeError):
        Trainer(chkpt_root=root, seed=7, **kwargs).fit(  # type: ignore[arg-type]
            BoringModel(fail_at=14), BoringData()
        )
    path = find_checkpoints(root, "boring")[-1]  # iteration 12: epoch 2, 4 batches into it
    saved = torch.load(path, weights_only=True)
    new = saved["training_state"]
    assert (new["global_epoch"], new["dataset_iter"], new["current_iteration"]) == (2, 4, 12)
    # Format 1 counted epochs completed, batches in the epoch, steps, batches in total.
    saved["format"] = 1
    saved["training_state"] = {
        **{k: v for k, v in new.items() if k not in ("average_iter_time", "running_iter")},
        "global_epoch": 1,
        "current_iteration": 4,
        "global_iteration": 12,
        "dataset_iter": 12,
    }
    torch.save(saved, path)
    resumed = BoringModel()
    state = Trainer(chkpt_root=root, seed=7, **kwargs).fit(resumed, BoringData())  # type: ignore[arg-type]
    assert resumed.batches_seen == 20 - 12
    assert (state.current_iteration, state.global_iteration) == (20, 20)
    for a, b in zip(resumed.weights(), reference.weights(), strict=True):
        assert torch.equal(a, b)


def test_fit_then_test_keeps_paths_and_names(tmp_path: Path) -> None:
    trainer = Trainer(total_steps=1, chkpt_frequency=1, chkpt_root=tmp_path, seed=0)
    model = BoringModel()
    trainer.fit(model, BoringData())
    trainer.test(model, BoringData())
    trainer.test(model, BoringData())
    assert (model.save_name, trainer.chkpt_root) == ("boring", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["boring_epoch00001_iter0000000008.pth"]


def test_bf16_autocast_trains_on_cpu() -> None:
    model = BoringModel()
    state = Trainer(total_steps=2, precision="bf16", seed=0).fit(model, BoringData())
    assert state.global_epoch == 2
    assert model.metrics["accuracy"] > 0.5


def test_progress_bars_are_off_without_a_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    Trainer(total_steps=1, seed=0).fit(BoringModel(), BoringData())
    assert capfd.readouterr().err == ""
    Trainer(total_steps=1, seed=0, enable_progress_bar=True).fit(BoringModel(), BoringData())
    assert "train" in capfd.readouterr().err


def test_same_seed_same_result() -> None:
    a, b = BoringModel(), BoringModel()
    Trainer(total_steps=2, seed=11).fit(a, BoringData())
    Trainer(total_steps=2, seed=11).fit(b, BoringData())
    for x, y in zip(a.weights(), b.weights(), strict=True):
        assert torch.equal(x, y)
