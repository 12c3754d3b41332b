from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
import torch

from helios import CUDAPlugin, Plugin, PluginConflictError, Trainer, TrainingState
from helios.plugins import move_to_device
from tests.helios_tests.boring import BoringData, BoringModel, RecordingModel, RecordingPlugin


class StopperPlugin(Plugin):
    def __init__(self, plug_id: str) -> None:
        super().__init__(plug_id)
        self.unique_overrides.should_training_stop = True

    def setup(self) -> None:
        pass

    def should_training_stop(self) -> bool:
        return True


def test_two_plugins_claiming_one_override_are_refused_before_training() -> None:
    calls: list[str] = []
    trainer = Trainer(total_steps=1, plugins=[StopperPlugin("first"), StopperPlugin("second")])
    with pytest.raises(PluginConflictError) as info:
        trainer.fit(RecordingModel(calls), BoringData())
    message = str(info.value)
    assert "'first'" in message
    assert "'second'" in message
    assert "'should_training_stop'" in message
    assert calls == []  # nothing ran, not even setup


def test_batch_override_conflict_names_both_plugins() -> None:
    trainer = Trainer(total_steps=1)
    RecordingPlugin([], "a").configure_trainer(trainer)
    RecordingPlugin([], "b").configure_trainer(trainer)
    with pytest.raises(
        PluginConflictError, match="'a' .* and 'b' .* both claim the 'training_batch'"
    ):
        trainer.fit(BoringModel(), BoringData())


def test_overriding_a_batch_hook_without_claiming_it_is_an_error() -> None:
    class Forgetful(Plugin):
        def setup(self) -> None:
            pass

        def process_training_batch(self, batch: Any, state: TrainingState) -> Any:
            return batch

    trainer = Trainer(total_steps=1, plugins=[Forgetful("forgetful")])
    with pytest.raises(PluginConflictError, match="does not claim unique_overrides.training_batch"):
        trainer.fit(BoringModel(), BoringData())


def test_duplicate_plugin_id_is_refused() -> None:
    trainer = Trainer(total_steps=1, plugins=[StopperPlugin("same")])
    with pytest.raises(PluginConflictError, match="already has a plug-in with id 'same'"):
        RecordingPlugin([], "same").configure_trainer(trainer)


def test_claimed_should_training_stop_ends_training_after_first_validation() -> None:
    trainer = Trainer(total_steps=5, plugins=[StopperPlugin("stopper")], seed=0)
    state = trainer.fit(BoringModel(), BoringData())
    assert (state.global_epoch, state.validation_cycles, state.stopped_early) == (1, 1, True)


def test_plugin_sees_trainer_context() -> None:
    plugin = StopperPlugin("ctx")
    with pytest.raises(RuntimeError, match="not attached to a trainer"):
        _ = plugin.device
    trainer = Trainer(total_steps=1, device="cpu", plugins=[plugin])
    assert trainer.plugins["ctx"] is plugin
    assert (plugin.device, plugin.rank, plugin.is_distributed, plugin.map_loc) == (
        torch.device("cpu"),
        0,
        False,
        "cpu",
    )


class Pair(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor


@dataclasses.dataclass
class Sample:
    image: torch.Tensor
    label: int
    extras: dict[str, Any]


def _nested_batch() -> Any:
    t = torch.ones(2)
    return {
        "plain": t,
        "list": [t, (t, "keep")],
        "pair": Pair(t, t),
        "sample": Sample(image=t, label=3, extras={"mask": t, "name": "a"}),
        "ordered": OrderedDict(z=t),
        "scalar": 1.5,
    }


def _devices(batch: Any) -> list[str]:
    if isinstance(batch, torch.Tensor):
        return [batch.device.type]
    if isinstance(batch, dict):
        return [d for v in batch.values() for d in _devices(v)]
    if isinstance(batch, list | tuple):
        return [d for v in batch for d in _devices(v)]
    if dataclasses.is_dataclass(batch):
        return [d for f in dataclasses.fields(batch) for d in _devices(getattr(batch, f.name))]
    return []


def test_move_to_device_recurses_and_keeps_container_types() -> None:
    moved = move_to_device(_nested_batch(), torch.device("meta"))
    assert _devices(moved) == ["meta"] * 8
    assert isinstance(moved["pair"], Pair)
    assert isinstance(moved["list"][1], tuple)
    assert moved["list"][1][1] == "keep"
    assert isinstance(moved["sample"], Sample)
    assert moved["sample"].label == 3
    assert moved["sample"].extras["name"] == "a"
    assert isinstance(moved["ordered"], OrderedDict)
    assert moved["scalar"] == 1.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_plugin_without_cuda_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="CUDAPlugin needs a CUDA device.*remove the plug-in"):
        Trainer(total_steps=1, plugins=[CUDAPlugin()])


@pytest.mark.gpu
def test_cuda_plugin_moves_nested_batches_to_the_gpu() -> None:
    plugin = CUDAPlugin()
    trainer = Trainer(total_steps=1, device="cuda", plugins=[plugin])
    assert trainer.plugins["cuda"] is plugin
    batch = _nested_batch()
    batch["pinned"] = torch.ones(3).pin_memory()
    moved = plugin.process_training_batch(batch, TrainingState())
    assert _devices(moved) == ["cuda"] * 9
    assert isinstance(moved["sample"], Sample)


@pytest.mark.gpu
def test_fit_on_gpu_with_cuda_plugin() -> None:
    model = BoringModel()
    Trainer(total_steps=3, seed=0, plugins=[CUDAPlugin()]).fit(model, BoringData())
    assert next(model.net.parameters()).is_cuda
    assert model.metrics["accuracy"] > 0.6
