"""Model: what the user writes to train a network with the helios Trainer."""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from helios.trainer import Trainer, TrainingState

__all__ = ["Model"]

# Attribute types whose state the default state_dict() saves.
_STATEFUL = (
    nn.Module,
    torch.optim.Optimizer,
    torch.optim.lr_scheduler.LRScheduler,
    torch.amp.GradScaler,
)


class Model(abc.ABC):
    """Networks, optimizers, the steps and the metrics of one training scheme.

    ``setup`` builds the networks and optimizers on ``self.device``.
    ``train_step`` either returns the loss, and the trainer runs backward and
    steps ``self.optimizers`` (gradient accumulation and fp16 scaling
    included), or returns ``None`` after optimizing by itself. Validation
    results go into ``self.metrics``, usually in ``on_validation_end``.

    The default ``state_dict`` saves every attribute that is a module,
    optimizer, LR scheduler or grad scaler, plus ``metrics``; override it to
    save more.

    Args:
        save_name: the stem of this model's checkpoint file names.
    """

    def __init__(self, save_name: str) -> None:
        self._save_name = save_name
        self._metrics: dict[str, float] = {}
        self.optimizers: list[torch.optim.Optimizer] = []
        self._trainer: Trainer | None = None
        # Tables helios-ml models keep their losses and scores in.
        self._loss_items: dict[str, torch.Tensor] = {}
        self._running_losses: dict[str, float] = {}
        self._val_scores: dict[str, Any] = {}
        self._test_scores: dict[str, Any] = {}

    @property
    def save_name(self) -> str:
        """The stem of this model's checkpoint file names."""
        return self._save_name

    @save_name.setter
    def save_name(self, name: str) -> None:
        self._save_name = name

    @property
    def metrics(self) -> dict[str, float]:
        """The model's metrics table, filled after validation; a subclass may compute
        them in a property of its own, as helios-ml models do."""
        return self._metrics

    # -- trainer context -------------------------------------------------
    @property
    def trainer(self) -> Trainer:
        """The trainer running this model."""
        if self._trainer is None:
            raise RuntimeError(f"model {self.save_name!r} is not attached to a trainer yet")
        return self._trainer

    @trainer.setter
    def trainer(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def device(self) -> torch.device:
        """The device to train on."""
        return self.trainer.device

    @property
    def rank(self) -> int:
        """The local rank (the device index on this host) of this process; 0 alone."""
        return self.trainer.local_rank

    @property
    def map_loc(self) -> str | dict[str, str]:
        """The ``map_location`` for loading checkpoints on this process."""
        return self.trainer.map_loc

    @property
    def is_distributed(self) -> bool:
        """Whether training runs distributed data parallel."""
        return self.trainer.is_distributed

    # -- what the user writes ---------------------------------------------
    @abc.abstractmethod
    def setup(self) -> None:
        """Build networks, optimizers and schedulers on ``self.device``."""

    def train_step(self, batch: Any, state: TrainingState) -> torch.Tensor | None:
        """Train on one batch: return the loss, or ``None`` after optimizing yourself."""
        raise NotImplementedError(f"{type(self).__name__} does not implement train_step()")

    def valid_step(self, batch: Any, step: int) -> None:
        """Validate on one batch (under ``torch.no_grad``)."""

    def test_step(self, batch: Any, step: int) -> None:
        """Test on one batch (under ``torch.no_grad``)."""

    def have_metrics_improved(self) -> bool:
        """Whether the last validation improved on the best so far.

        Drives early stopping and which checkpoint is kept as best.
        """
        return True

    def should_training_stop(self) -> bool:
        """Asked after each training batch and each validation cycle; True ends training."""
        return False

    # -- hooks (called after the plug-ins' hooks of the same name) ---------
    def on_training_start(self) -> None:
        """Called when training starts."""

    def on_training_end(self) -> None:
        """Called when training ends, also when it stopped early."""

    def on_training_epoch_start(self, epoch: int) -> None:
        """Called at the start of each epoch."""

    def on_training_epoch_end(self, epoch: int) -> None:
        """Called at the end of each full epoch."""

    def on_training_batch_start(self, state: TrainingState) -> None:
        """Called before each training batch."""

    def on_training_batch_end(self, state: TrainingState, should_log: bool = False) -> None:
        """Called after each training batch (after the optimizer step, if one was due)."""

    def on_validation_start(self, validation_cycle: int) -> None:
        """Called when a validation cycle starts."""

    def on_validation_batch_start(self, step: int) -> None:
        """Called before each validation batch."""

    def on_validation_batch_end(self, step: int) -> None:
        """Called after each validation batch."""

    def on_testing_batch_start(self, step: int) -> None:
        """Called before each testing batch."""

    def on_testing_batch_end(self, step: int) -> None:
        """Called after each testing batch."""

    def on_validation_end(self, validation_cycle: int) -> None:
        """Called when a validation cycle ends: fill ``self.metrics`` here."""

    def on_testing_start(self) -> None:
        """Called when testing starts."""

    def on_testing_end(self) -> None:
        """Called when testing ends: fill ``self.metrics`` here."""

    def train(self) -> None:
        """Put the networks in training mode (the trainer calls it before training)."""
        for module in self.modules().values():
            module.train()

    def eval(self) -> None:
        """Put the networks in evaluation mode (before validation and testing)."""
        for module in self.modules().values():
            module.eval()

    # -- state ------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:
        """The model's networks: every attribute that is an ``nn.Module``."""
        return {name: value for name, value in vars(self).items() if isinstance(value, nn.Module)}

    def state_dict(self) -> dict[str, Any]:
        """State saved in checkpoints."""
        state: dict[str, Any] = {
            name: value.state_dict()
            for name, value in vars(self).items()
            if isinstance(value, _STATEFUL)
        }
        state["metrics"] = dict(self.metrics)
        return state

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        """Restore what ``state_dict`` saved."""
        for name, value in vars(self).items():
            if isinstance(value, _STATEFUL) and name in state_dict:
                value.load_state_dict(state_dict[name])
        self._metrics = dict(state_dict.get("metrics", {}))
