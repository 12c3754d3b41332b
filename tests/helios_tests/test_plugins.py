from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch

from helios import (
    CUDAPlugin,
    DuplicatePluginError,
    Plugin,
    PluginConflictError,
    Trainer,
    TrainingState,
)
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


def test_two_plugins_claiming_one_override_are_refused_at_registration() -> None:
    with pytest.raises(PluginConflictError) as info:
        Trainer(total_steps=1, plugins=[StopperPlugin("first"), StopperPlugin("second")])
    message = str(info.value)
    assert "'first'" in message
    assert "'second'" in message
    assert "'should_training_stop'" in message
    trainer = Trainer(total_steps=1, plugins=[StopperPlugin("first")])
    with pytest.raises(PluginConflictError):
        trainer.register_plugin(StopperPlugin("second"))
    assert list(trainer.plugins) == ["first"]  # the refused one is not left behind


def test_conflicting_plugins_registered_by_configure_trainer_are_refused_before_any_hook() -> None:
    calls: list[str] = []
    trainer = Trainer(total_steps=1)
    RecordingPlugin(calls, "a").configure_trainer(trainer)
    RecordingPlugin(calls, "b").configure_trainer(trainer)
    with pytest.raises(
        PluginConflictError, match="'a' .* and 'b' .* both claim the 'training_batch'"
    ):
        trainer.fit(RecordingModel(calls), BoringData(calls=calls))
    assert calls == []  # nothing ran, not even setup


def test_a_batch_hook_that_is_not_claimed_is_accepted_and_not_called() -> None:
    class Unclaimed(Plugin):
        def __init__(self) -> None:
            super().__init__("unclaimed")
            self.seen = 0

        def setup(self) -> None:
            pass

        def process_training_batch(self, batch: Any, state: TrainingState) -> Any:
            self.seen += 1
            return batch

    plugin = Unclaimed()
    state = Trainer(total_steps=1, plugins=[plugin], seed=0).fit(BoringModel(), BoringData())
    assert state.global_iteration == 8
    assert plugin.seen == 0


def test_duplicate_plugin_id_is_a_key_error_naming_both() -> None:
    trainer = Trainer(total_steps=1, plugins=[StopperPlugin("same")])
    with pytest.raises(KeyError) as info:
        RecordingPlugin([], "same").configure_trainer(trainer)
    assert isinstance(info.value, DuplicatePluginError)
    assert isinstance(info.value, PluginConflictError)
    message = str(info.value)
    assert "'same'" in message
    assert "StopperPlugin" in message
    assert "RecordingPlugin" in message
    with pytest.raises(KeyError):
        trainer.register_plugin(RecordingPlugin([], "same"))


def test_registering_the_same_plugin_twice_is_a_key_error_as_in_helios_ml() -> None:
    # It was accepted silently; helios-ml 1.4.1 raises KeyError for any taken id.
    plugin = RecordingPlugin([], "once")
    trainer = Trainer(total_steps=1)
    plugin.configure_trainer(trainer)
    with pytest.raises(KeyError, match="'once' .* is registered in this trainer already"):
        plugin.configure_trainer(trainer)
    with pytest.raises(KeyError):
        trainer.register_plugin(plugin)
    with pytest.raises(KeyError):
        Trainer(total_steps=1, plugins=[plugin, plugin])
    assert trainer.plugins == {"once": plugin}


def test_should_training_stop_is_asked_after_every_batch() -> None:
    trainer = Trainer(total_steps=5, plugins=[StopperPlugin("stopper")], seed=0)
    state = trainer.fit(BoringModel(), BoringData())
    assert (state.global_iteration, state.validation_cycles, state.stopped_early) == (1, 0, True)


def test_should_training_stop_is_asked_without_validation() -> None:
    class AfterBatches(Plugin):
        def __init__(self, batches: int) -> None:
            super().__init__("after")
            self.batches = batches

        def setup(self) -> None:
            pass

        def should_training_stop(self) -> bool:  # not claimed: asked all the same
            return self.trainer.state.global_iteration >= self.batches

    trainer = Trainer(total_steps=5, valid_frequency=None, plugins=[AfterBatches(11)], seed=0)
    state = trainer.fit(BoringModel(), BoringData())
    assert (state.global_iteration, state.global_epoch, state.stopped_early) == (11, 2, True)


class ContextReader(Plugin):
    """Reads its context in setup, as helios-ml plug-ins do."""

    def __init__(self) -> None:
        super().__init__("ctx")
        self.seen: tuple[Any, ...] = ()

    def configure_trainer(self, trainer: Trainer) -> None:
        pass  # an override that registers nothing

    def setup(self) -> None:
        self.seen = (self.device, self.rank, self.is_distributed, self.map_loc, self.trainer)


def test_plugin_context_is_assigned_when_training_starts() -> None:
    plugin = ContextReader()
    with pytest.raises(RuntimeError, match="in no trainer yet"):
        _ = plugin.trainer
    trainer = Trainer(total_steps=1, device="cpu", seed=0)
    plugin.configure_trainer(trainer)
    assert trainer.plugins == {}
    trainer.plugins[plugin.plug_id] = plugin  # put into the table directly
    trainer.fit(BoringModel(), BoringData())
    assert plugin.seen == (torch.device("cpu"), 0, False, "cpu", trainer)
    # The context is settable, as helios-ml's.
    plugin.device, plugin.rank, plugin.is_distributed = torch.device("meta"), 3, True
    plugin.map_loc = {"cuda:0": "cpu"}
    assert (plugin.device, plugin.rank, plugin.is_distributed, plugin.map_loc) == (
        torch.device("meta"),
        3,
        True,
        {"cuda:0": "cpu"},
    )


def test_plug_id_defaults_to_the_class_name() -> None:
    class Nameless(Plugin):
        def setup(self) -> None:
            pass

    trainer = Trainer(total_steps=1, plugins=[Nameless()])
    assert list(trainer.plugins) == ["Nameless"]


class Expecting(Plugin):
    """Expects ValueError from fit, and raises it when training ends."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__("expecting")
        self.calls = calls

    def configure_trainer(self, trainer: Trainer) -> None:
        super().configure_trainer(trainer)
        self._append_train_exceptions(ValueError, trainer)
        self._append_test_exceptions([KeyError, IndexError], trainer)

    def setup(self) -> None:
        pass

    def on_training_end(self) -> None:
        raise ValueError("expected at the end")


def test_expected_exceptions_let_the_other_end_hooks_run_then_propagate() -> None:
    calls: list[str] = []
    trainer = Trainer(total_steps=1, seed=0)
    Expecting(calls).configure_trainer(trainer)
    RecordingPlugin(calls, "after").configure_trainer(trainer)
    assert trainer.train_exceptions == [ValueError]
    assert trainer.test_exceptions == [KeyError, IndexError]
    with pytest.raises(ValueError, match="expected at the end"):
        trainer.fit(RecordingModel(calls), BoringData())
    assert calls[-2:] == ["plugin.on_training_end", "model.on_training_end"]


def test_an_unexpected_exception_propagates_at_once() -> None:
    class Broken(Plugin):
        def setup(self) -> None:
            pass

        def on_training_end(self) -> None:
            raise RuntimeError("not expected")

    calls: list[str] = []
    trainer = Trainer(total_steps=1, seed=0, plugins=[Broken()])
    with pytest.raises(RuntimeError, match="not expected"):
        trainer.fit(RecordingModel(calls), BoringData())
    assert "model.on_training_end" not in calls


class Stateful(Plugin):
    def __init__(self, calls: list[str], plug_id: str) -> None:
        super().__init__(plug_id)
        self.calls = calls

    def setup(self) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {"id": self.plug_id}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.calls.append(f"{self.plug_id}.load_state_dict({state_dict['id']})")


class LoadRecordingModel(BoringModel):
    def __init__(self, calls: list[str]) -> None:
        super().__init__()
        self.calls = calls

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self.calls.append("model.load_state_dict")
        super().load_state_dict(state_dict)


def test_resume_loads_the_model_then_the_plugins_the_checkpoint_holds(tmp_path: Path) -> None:
    calls: list[str] = []
    Trainer(
        total_steps=1,
        chkpt_root=tmp_path,
        chkpt_frequency=1,
        seed=0,
        plugins=[Stateful(calls, "a")],
    ).fit(LoadRecordingModel(calls), BoringData())
    assert calls == []
    resumed = Trainer(
        total_steps=2,
        chkpt_root=tmp_path,
        chkpt_frequency=1,
        seed=0,
        plugins=[Stateful(calls, "a"), Stateful(calls, "new")],
    )
    resumed.fit(LoadRecordingModel(calls), BoringData())
    assert calls == ["model.load_state_dict", "a.load_state_dict(a)"]  # "new" is not in it


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
        CUDAPlugin()  # refused when created, as the seed documents


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
@pytest.mark.parametrize("device", [None, "cuda"])
def test_fit_on_gpu_with_cuda_plugin(device: str | None) -> None:
    model = BoringModel()
    trainer = Trainer(total_steps=3, seed=0, device=device, plugins=[CUDAPlugin()])
    trainer.fit(model, BoringData())
    assert next(model.net.parameters()).is_cuda
    assert model.metrics["accuracy"] > 0.6


def test_a_gpu_named_without_index_is_the_ranks_own() -> None:
    # torch.cuda.set_device refuses a bare "cuda"; the first GPU run failed on it.
    assert Trainer(total_steps=1, device="cuda").device == torch.device("cuda", 0)
    assert Trainer(total_steps=1, device="cuda:0").device == torch.device("cuda", 0)
