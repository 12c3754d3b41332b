"""The plug-in API: Plugin, UniquePluginOverrides, the registry and CUDAPlugin."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from helios.registry import Registry

if TYPE_CHECKING:
    from helios.model import Model
    from helios.trainer import Trainer, TrainingState

__all__ = [
    "PLUGIN_REGISTRY",
    "CUDAPlugin",
    "DuplicatePluginError",
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
    """Two plug-ins claim the same override, or the same id in one trainer."""


class DuplicatePluginError(PluginConflictError, KeyError):
    """A trainer already holds another plug-in under this plug-in's id.

    A ``KeyError``, as helios-ml raises, and a ``PluginConflictError``.
    """

    def __str__(self) -> str:
        return str(self.args[0])


PLUGIN_REGISTRY: Registry[Plugin] = Registry("plugin")


def create_plugin(type_name: str, *args: Any, **kwargs: Any) -> Plugin:
    """Create a registered plug-in by its class name, e.g. ``"CUDAPlugin"``."""
    return PLUGIN_REGISTRY.create(type_name, *args, **kwargs)


class Plugin(abc.ABC):
    """Base class for plug-ins that extend or override the trainer.

    Every hook is a documented no-op; the trainer calls a plug-in's hook before
    the model's hook of the same name. A plug-in's ``process_*_batch`` runs
    only when it claims that override in ``unique_overrides``; no two plug-ins
    of a trainer may claim the same override. ``should_training_stop`` is asked
    of every plug-in after each training batch and after each validation cycle.

    ``is_distributed``, ``map_loc``, ``device``, ``rank`` and ``trainer`` are
    assigned by the trainer to each of its plug-ins when training or testing
    starts (and read from the trainer once the plug-in is registered in one).

    Register a plug-in class with ``@PLUGIN_REGISTRY.register`` (or
    ``@PLUGIN_REGISTRY``, or ``PLUGIN_REGISTRY.register(cls)``) to create it by
    name with ``create_plugin``.

    Args:
        plug_id: the key under which the trainer's ``plugins`` table holds it
            (default: the class name).
    """

    def __init__(self, plug_id: str | None = None) -> None:
        self._plug_id = plug_id if plug_id is not None else type(self).__name__
        self._overrides = UniquePluginOverrides()
        self._trainer: Trainer | None = None
        self._is_distributed: bool | None = None
        self._map_loc: str | dict[str, str] | None = None
        self._device: torch.device | None = None
        self._rank: int | None = None

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
        """The trainer this plug-in is registered in."""
        if self._trainer is None:
            raise RuntimeError(
                f"plug-in {self._plug_id!r} is in no trainer yet: call "
                "configure_trainer(trainer) or pass it in Trainer(plugins=[...])"
            )
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def is_distributed(self) -> bool:
        """Whether the trainer runs distributed data parallel."""
        if self._is_distributed is None:
            return self._trainer.is_distributed if self._trainer is not None else False
        return self._is_distributed

    @is_distributed.setter
    def is_distributed(self, value: bool) -> None:
        self._is_distributed = value

    @property
    def device(self) -> torch.device:
        """The device the trainer trains on."""
        if self._device is None:
            return self.trainer.device
        return self._device

    @device.setter
    def device(self, device: torch.device) -> None:
        self._device = device

    @property
    def rank(self) -> int:
        """The local rank (the device index on this host) of this process; 0 alone."""
        if self._rank is None:
            return self._trainer.local_rank if self._trainer is not None else 0
        return self._rank

    @rank.setter
    def rank(self, rank: int) -> None:
        self._rank = rank

    @property
    def map_loc(self) -> str | dict[str, str]:
        """The ``map_location`` for loading checkpoints on this process."""
        if self._map_loc is None:
            return self._trainer.map_loc if self._trainer is not None else ""
        return self._map_loc

    @map_loc.setter
    def map_loc(self, map_loc: str | dict[str, str]) -> None:
        self._map_loc = map_loc

    def configure_trainer(self, trainer: Trainer) -> None:
        """Register in ``trainer``'s ``plugins`` table under ``plug_id``.

        Override it to adjust the trainer too (e.g. its expected exceptions),
        registering with ``super().configure_trainer(trainer)`` or
        ``self._register_in_trainer(trainer)``.
        """
        self._register_in_trainer(trainer)

    def configure_model(self, model: Model) -> None:
        """Adjust the model before training or testing starts."""

    @abc.abstractmethod
    def setup(self) -> None:
        """Prepare the plug-in; called once per fit or test, before the data and the model."""

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
        """Asked after each training batch and each validation cycle; True ends training.

        Under torchrun every rank must give the same answer.
        """
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
        """Restore state from a checkpoint; raise to refuse an incompatible one.

        Called only when the checkpoint holds this plug-in's id, after the model's.
        """

    def _register_in_trainer(self, trainer: Trainer) -> None:
        """Enter ``trainer.plugins`` under ``plug_id``.

        Raises:
            DuplicatePluginError: a plug-in holds that id, this one included: registering
                it twice is a mistake, as in helios-ml (a ``KeyError``).
        """
        other = trainer.plugins.get(self._plug_id)
        if other is self:
            raise DuplicatePluginError(
                f"plug-in {self._plug_id!r} ({type(self).__name__}) is registered in this "
                "trainer already; register it once"
            )
        if other is not None:
            raise DuplicatePluginError(
                f"the trainer already has plug-in {self._plug_id!r} ({type(other).__name__}); "
                f"give {type(self).__name__} another plug_id"
            )
        trainer.plugins[self._plug_id] = self
        self._trainer = trainer

    def _append_train_exceptions(
        self, exc: type[Exception] | Sequence[type[Exception]], trainer: Trainer
    ) -> None:
        """Add exception types to ``trainer.train_exceptions``."""
        _extend_unique(trainer.train_exceptions, exc)

    def _append_test_exceptions(
        self, exc: type[Exception] | Sequence[type[Exception]], trainer: Trainer
    ) -> None:
        """Add exception types to ``trainer.test_exceptions``."""
        _extend_unique(trainer.test_exceptions, exc)


def _extend_unique(
    known: list[type[BaseException]], exc: type[Exception] | Sequence[type[Exception]]
) -> None:
    for item in [exc] if isinstance(exc, type) else exc:
        if item not in known:
            known.append(item)


def check_unique_overrides(plugins: Iterable[Plugin]) -> None:
    """Refuse two plug-ins claiming one override.

    Raises:
        PluginConflictError: naming the plug-ins and the override.
    """
    owners: dict[str, Plugin] = {}
    for plugin in plugins:
        for field in dataclasses.fields(UniquePluginOverrides):
            if not getattr(plugin.unique_overrides, field.name):
                continue
            owner = owners.setdefault(field.name, plugin)
            if owner is not plugin:
                raise PluginConflictError(
                    f"plug-ins {owner.plug_id!r} ({type(owner).__name__}) and "
                    f"{plugin.plug_id!r} ({type(plugin).__name__}) both claim the "
                    f"{field.name!r} override; remove one of them from the trainer"
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


@PLUGIN_REGISTRY.register
class CUDAPlugin(Plugin):
    """Moves training, validation and testing batches to the trainer's device.

    Tensors in lists, tuples and dicts move as with helios-ml; so do named
    tuples, dataclasses and any nesting of them, and tensors in pinned memory
    are copied without blocking. Override ``_move_collection_to_device`` to
    handle batch types of your own.

    Raises:
        RuntimeError: when created where CUDA is not available.
    """

    plugin_id = "cuda"

    def __init__(self) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError(
                "CUDAPlugin needs a CUDA device, but torch.cuda.is_available() is False; "
                "remove the plug-in to train on the CPU, or run on a GPU host"
            )
        super().__init__(self.plugin_id)
        self.unique_overrides.training_batch = True
        self.unique_overrides.validation_batch = True
        self.unique_overrides.testing_batch = True

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
