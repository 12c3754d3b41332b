"""The plug-in API: Plugin, UniquePluginOverrides, the registry and CUDAPlugin."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from helios.registry import Registry

if TYPE_CHECKING:
    from helios.model import Model
    from helios.trainer import Trainer, TrainingState

__all__ = [
    "PLUGIN_REGISTRY",
    "CUDAPlugin",
    "Plugin",
    "PluginConflictError",
    "UniquePluginOverrides",
    "check_unique_overrides",
    "create_plugin",
    "move_to_device",
]


@dataclasses.dataclass
class UniquePluginOverrides:
    """Actions that at most one plug-in of a trainer may claim.

    Attributes:
        training_batch: the plug-in processes every training batch.
        validation_batch: the plug-in processes every validation batch.
        testing_batch: the plug-in processes every testing batch.
        should_training_stop: the plug-in may stop training after a validation cycle.
    """

    training_batch: bool = False
    validation_batch: bool = False
    testing_batch: bool = False
    should_training_stop: bool = False


class PluginConflictError(ValueError):
    """Two plug-ins claim the same override, or one misses a claim it needs."""


PLUGIN_REGISTRY: Registry[Plugin] = Registry("plugin")


def create_plugin(type_name: str, *args: Any, **kwargs: Any) -> Plugin:
    """Create a registered plug-in by its class name, e.g. ``"CUDAPlugin"``."""
    return PLUGIN_REGISTRY.create(type_name, *args, **kwargs)


class Plugin(abc.ABC):
    """Base class for plug-ins that extend or override the trainer.

    Every hook is a documented no-op; the trainer calls a plug-in's hook before
    the model's hook of the same name. A plug-in's ``process_*_batch`` runs
    only when it claims that override in ``unique_overrides``, and its
    ``should_training_stop`` is asked (once per validation cycle) only when it
    claims ``should_training_stop``.

    Subclasses register themselves in ``PLUGIN_REGISTRY`` under their class name.

    Args:
        plug_id: the key under which the trainer's ``plugins`` table holds it.
    """

    def __init__(self, plug_id: str) -> None:
        self._plug_id = plug_id
        self._overrides = UniquePluginOverrides()
        self._trainer: Trainer | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not _has_abstract_methods(cls):
            PLUGIN_REGISTRY.register(cls)

    @property
    def plug_id(self) -> str:
        """The key of this plug-in in the trainer's ``plugins`` table."""
        return self._plug_id

    @property
    def unique_overrides(self) -> UniquePluginOverrides:
        """The overrides this plug-in claims."""
        return self._overrides

    @property
    def trainer(self) -> Trainer:
        """The trainer this plug-in is attached to."""
        if self._trainer is None:
            raise RuntimeError(f"plug-in {self._plug_id!r} is not attached to a trainer yet")
        return self._trainer

    @property
    def is_distributed(self) -> bool:
        """Whether the trainer runs distributed data parallel."""
        return self.trainer.is_distributed

    @property
    def device(self) -> torch.device:
        """The device the trainer trains on."""
        return self.trainer.device

    @property
    def rank(self) -> int:
        """The global rank of this process (0 when not distributed)."""
        return self.trainer.rank

    @property
    def map_loc(self) -> str | dict[str, str]:
        """The ``map_location`` for loading checkpoints on this process."""
        return self.trainer.map_loc

    def configure_trainer(self, trainer: Trainer) -> None:
        """Attach to ``trainer`` and enter its ``plugins`` table under ``plug_id``."""
        other = trainer.plugins.get(self._plug_id)
        if other is not None and other is not self:
            raise PluginConflictError(
                f"the trainer already has a plug-in with id {self._plug_id!r} "
                f"({type(other).__name__}); give {type(self).__name__} another id"
            )
        self._trainer = trainer
        trainer.plugins[self._plug_id] = self

    def configure_model(self, model: Model) -> None:
        """Adjust the model before training or testing starts."""

    @abc.abstractmethod
    def setup(self) -> None:
        """Prepare the plug-in; called once per fit or test, before the model's setup."""

    def on_training_start(self) -> None:
        """Called when training starts."""

    def process_training_batch(self, batch: Any, state: TrainingState) -> Any:
        """Return the training batch to pass to the model (needs the claim)."""
        return batch

    def on_training_end(self) -> None:
        """Called when training ends, also when it was stopped early."""

    def on_validation_start(self, validation_cycle: int) -> None:
        """Called when a validation cycle starts."""

    def process_validation_batch(self, batch: Any, step: int) -> Any:
        """Return the validation batch to pass to the model (needs the claim)."""
        return batch

    def on_validation_end(self, validation_cycle: int) -> None:
        """Called when a validation cycle ends, before the model's hook."""

    def should_training_stop(self) -> bool:
        """Asked after each validation cycle (after the model's ``on_validation_end``)."""
        return False

    def on_testing_start(self) -> None:
        """Called when testing starts."""

    def process_testing_batch(self, batch: Any, step: int) -> Any:
        """Return the testing batch to pass to the model (needs the claim)."""
        return batch

    def on_testing_end(self) -> None:
        """Called when testing ends."""

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints."""
        return {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore state from a checkpoint; raise to refuse an incompatible one."""


# override flag -> the method a plug-in must claim that flag to have called
_CLAIMED_METHODS = {
    "training_batch": "process_training_batch",
    "validation_batch": "process_validation_batch",
    "testing_batch": "process_testing_batch",
    "should_training_stop": "should_training_stop",
}


def check_unique_overrides(plugins: Iterable[Plugin]) -> None:
    """Refuse two plug-ins claiming one override, and unclaimed overridden methods.

    Raises:
        PluginConflictError: naming the plug-ins and the override.
    """
    owners: dict[str, Plugin] = {}
    for plugin in plugins:
        claims = plugin.unique_overrides
        for flag, method in _CLAIMED_METHODS.items():
            if getattr(claims, flag):
                owner = owners.setdefault(flag, plugin)
                if owner is not plugin:
                    raise PluginConflictError(
                        f"plug-ins {owner.plug_id!r} ({type(owner).__name__}) and "
                        f"{plugin.plug_id!r} ({type(plugin).__name__}) both claim the "
                        f"{flag!r} override; remove one of them from the trainer"
                    )
            elif getattr(type(plugin), method) is not getattr(Plugin, method):
                raise PluginConflictError(
                    f"plug-in {plugin.plug_id!r} ({type(plugin).__name__}) overrides "
                    f"{method}() but does not claim unique_overrides.{flag}; set it to "
                    "True in __init__ or the trainer never calls it"
                )


def _has_abstract_methods(cls: type) -> bool:
    return any(
        getattr(getattr(cls, name, None), "__isabstractmethod__", False) for name in dir(cls)
    )


def move_to_device(batch: Any, device: torch.device) -> Any:
    """Copy every tensor in ``batch`` to ``device``, keeping the container types.

    Handles tensors, mappings, lists, tuples, named tuples, dataclass instances
    and any nesting of them; other values pass through unchanged. Tensors in
    pinned memory are copied without blocking.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=batch.is_pinned())
    if isinstance(batch, Mapping):
        moved = {key: move_to_device(value, device) for key, value in batch.items()}
        return moved if type(batch) is dict else type(batch)(moved)  # type: ignore[call-arg]
    if isinstance(batch, tuple):
        items = [move_to_device(value, device) for value in batch]
        if hasattr(batch, "_fields"):  # named tuple
            return type(batch)(*items)
        return type(batch)(items)
    if isinstance(batch, list):
        return [move_to_device(value, device) for value in batch]
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        moved_fields = {
            f.name: move_to_device(getattr(batch, f.name), device)
            for f in dataclasses.fields(batch)
            if f.init
        }
        return dataclasses.replace(batch, **moved_fields)
    return batch


class CUDAPlugin(Plugin):
    """Moves training, validation and testing batches to the trainer's CUDA device.

    Override ``_move_collection_to_device`` to handle batch types of your own.
    """

    plugin_id = "cuda"

    def __init__(self) -> None:
        super().__init__(self.plugin_id)
        self.unique_overrides.training_batch = True
        self.unique_overrides.validation_batch = True
        self.unique_overrides.testing_batch = True

    def configure_trainer(self, trainer: Trainer) -> None:
        """Check the trainer runs on CUDA and register under ``"cuda"``."""
        if not torch.cuda.is_available():
            raise RuntimeError(
                "CUDAPlugin needs a CUDA device, but torch.cuda.is_available() is False; "
                "remove the plug-in to train on the CPU, or run on a GPU host"
            )
        if trainer.device.type != "cuda":
            raise RuntimeError(
                f"CUDAPlugin needs a trainer on a CUDA device, this one is on {trainer.device}; "
                "create the Trainer with device='cuda' (the default when CUDA is available)"
            )
        super().configure_trainer(trainer)

    def setup(self) -> None:
        """Nothing to prepare."""

    def process_training_batch(self, batch: Any, state: TrainingState) -> Any:
        """Move the training batch to the device."""
        return self._move_collection_to_device(batch)

    def process_validation_batch(self, batch: Any, step: int) -> Any:
        """Move the validation batch to the device."""
        return self._move_collection_to_device(batch)

    def process_testing_batch(self, batch: Any, step: int) -> Any:
        """Move the testing batch to the device."""
        return self._move_collection_to_device(batch)

    def _move_collection_to_device(self, batch: Any) -> Any:
        return move_to_device(batch, self.device)
