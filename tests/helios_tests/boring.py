"""A tiny model, data module and recording plug-in for trainer tests."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from helios import DataLoaderParams, DataModule, Model, Plugin, TrainingState


class BoringData(DataModule):
    """Two linearly separable classes in 8 dimensions."""

    def __init__(
        self,
        n_train: int = 64,
        n_valid: int = 32,
        batch_size: int = 8,
        shuffle: bool = True,
        calls: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.n_train, self.n_valid, self.batch_size = n_train, n_valid, batch_size
        self.shuffle = shuffle
        self.calls = calls  # records setup() when given

    def setup(self) -> None:
        if self.calls is not None:
            self.calls.append("data.setup")
        gen = torch.Generator().manual_seed(1234)
        n = self.n_train + self.n_valid
        x = torch.randn(n, 8, generator=gen)
        y = (x @ torch.linspace(-1.0, 1.0, 8) > 0).long()
        self.train_dataset = TensorDataset(x[: self.n_train], y[: self.n_train])
        self.valid_dataset = TensorDataset(x[self.n_train :], y[self.n_train :])
        self.test_dataset = self.valid_dataset
        self.train_params = DataLoaderParams(batch_size=self.batch_size, shuffle=self.shuffle)
        self.valid_params = DataLoaderParams(batch_size=self.batch_size)
        self.test_params = DataLoaderParams(batch_size=self.batch_size)


class BoringModel(Model):
    """An MLP with dropout; ``fail_at`` raises at that (1-based) batch to simulate a crash."""

    def __init__(
        self,
        save_name: str = "boring",
        lr: float = 0.1,
        hidden: int = 16,
        fail_at: int | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(save_name)
        self.lr, self.hidden, self.fail_at, self.dropout = lr, hidden, fail_at, dropout
        self.batches_seen = 0

    def setup(self) -> None:
        self.net = nn.Sequential(
            nn.Linear(8, self.hidden),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden, 2),
        ).to(self.device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=self.lr, momentum=0.9)
        self.optimizers = [self.optimizer]

    def train_step(self, batch: Any, state: TrainingState) -> torch.Tensor:
        self.batches_seen += 1
        if self.fail_at is not None and state.global_iteration == self.fail_at:
            raise RuntimeError(f"simulated crash at batch {self.fail_at}")
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def _reset_counts(self) -> None:
        self._correct = 0
        self._total = 0

    def on_validation_start(self, validation_cycle: int) -> None:
        self._reset_counts()

    def valid_step(self, batch: Any, step: int) -> None:
        x, y = batch
        self._correct += int((self.net(x).argmax(dim=1) == y).sum())
        self._total += len(y)

    test_step = valid_step

    def on_testing_start(self) -> None:
        self._reset_counts()

    def on_validation_end(self, validation_cycle: int) -> None:
        accuracy = self._correct / self._total
        self._improved = accuracy > self.metrics.get("best_accuracy", -1.0)
        self.metrics["accuracy"] = accuracy
        self.metrics["best_accuracy"] = max(accuracy, self.metrics.get("best_accuracy", -1.0))

    def on_testing_end(self) -> None:
        self.metrics["test_accuracy"] = self._correct / self._total

    def have_metrics_improved(self) -> bool:
        return self._improved

    def weights(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.net.parameters()]


class RecordingPlugin(Plugin):
    """Records every hook the trainer calls on it into a shared list."""

    def __init__(self, calls: list[str], plug_id: str = "recorder") -> None:
        super().__init__(plug_id)
        self.calls = calls
        self.unique_overrides.training_batch = True
        self.unique_overrides.validation_batch = True
        self.unique_overrides.testing_batch = True

    def configure_model(self, model: Model) -> None:
        self.calls.append("plugin.configure_model")

    def setup(self) -> None:
        self.calls.append("plugin.setup")

    def on_training_start(self) -> None:
        self.calls.append("plugin.on_training_start")

    def process_training_batch(self, batch: Any, state: TrainingState) -> Any:
        self.calls.append("plugin.process_training_batch")
        return batch

    def on_training_end(self) -> None:
        self.calls.append("plugin.on_training_end")

    def on_validation_start(self, validation_cycle: int) -> None:
        self.calls.append(f"plugin.on_validation_start({validation_cycle})")

    def process_validation_batch(self, batch: Any, step: int) -> Any:
        self.calls.append("plugin.process_validation_batch")
        return batch

    def on_validation_end(self, validation_cycle: int) -> None:
        self.calls.append(f"plugin.on_validation_end({validation_cycle})")

    def on_testing_start(self) -> None:
        self.calls.append("plugin.on_testing_start")

    def process_testing_batch(self, batch: Any, step: int) -> Any:
        self.calls.append("plugin.process_testing_batch")
        return batch

    def on_testing_end(self) -> None:
        self.calls.append("plugin.on_testing_end")

    def should_training_stop(self) -> bool:
        self.calls.append("plugin.should_training_stop")
        return False


class RecordingModel(BoringModel):
    """A BoringModel that records its hooks into a shared list."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__("recording")
        self.calls = calls

    def _record(self, name: str) -> None:
        self.calls.append(f"model.{name}")

    def setup(self) -> None:
        self._record("setup")
        super().setup()

    def on_training_start(self) -> None:
        self._record("on_training_start")

    def on_training_end(self) -> None:
        self._record("on_training_end")

    def on_training_epoch_start(self, epoch: int) -> None:
        self._record(f"on_training_epoch_start({epoch})")

    def on_training_epoch_end(self, epoch: int) -> None:
        self._record(f"on_training_epoch_end({epoch})")

    def on_training_batch_start(self, state: TrainingState) -> None:
        self._record("on_training_batch_start")

    def train_step(self, batch: Any, state: TrainingState) -> torch.Tensor:
        self._record("train_step")
        return super().train_step(batch, state)

    def on_training_batch_end(self, state: TrainingState, should_log: bool = False) -> None:
        self._record("on_training_batch_end")

    def on_validation_start(self, validation_cycle: int) -> None:
        self._record(f"on_validation_start({validation_cycle})")
        super().on_validation_start(validation_cycle)

    def on_validation_batch_start(self, step: int) -> None:
        self._record(f"on_validation_batch_start({step})")

    def valid_step(self, batch: Any, step: int) -> None:
        self._record("valid_step")
        super().valid_step(batch, step)

    def on_validation_batch_end(self, step: int) -> None:
        self._record(f"on_validation_batch_end({step})")

    def on_validation_end(self, validation_cycle: int) -> None:
        self._record(f"on_validation_end({validation_cycle})")
        super().on_validation_end(validation_cycle)

    def have_metrics_improved(self) -> bool:
        self._record("have_metrics_improved")
        return super().have_metrics_improved()

    def should_training_stop(self) -> bool:
        self._record("should_training_stop")
        return False

    def on_testing_start(self) -> None:
        self._record("on_testing_start")
        super().on_testing_start()

    def test_step(self, batch: Any, step: int) -> None:
        self._record("test_step")
        super().valid_step(batch, step)

    def on_testing_end(self) -> None:
        self._record("on_testing_end")
        super().on_testing_end()
