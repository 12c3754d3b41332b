"""Models and data of the built-in tasks (imported only when a trial builds one)."""

from __future__ import annotations

import functools
import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

from helios import DataLoaderParams, DataModule, Model, TrainingState


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """(pixels, labels) of scikit-learn's digits, read from the file it ships: importing
    ``sklearn.datasets`` for them costs a worker about 170 MB (SciPy and the rest)."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the digits task reads scikit-learn's copy: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


class DigitsData(DataModule):
    """scikit-learn's 8x8 digits, scaled to [0, 1], split with a fixed seed."""

    def __init__(self, batch_size: int, valid_fraction: float = 0.2) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.valid_fraction = valid_fraction

    def setup(self) -> None:
        pixels, labels = load_digits()
        x = torch.tensor(pixels, dtype=torch.float32) / 16.0
        y = torch.tensor(labels, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        n_valid = int(len(x) * self.valid_fraction)
        valid, train = order[:n_valid], order[n_valid:]
        self.train_dataset = TensorDataset(x[train], y[train])
        self.valid_dataset = TensorDataset(x[valid], y[valid])
        self.test_dataset = self.valid_dataset
        self.train_params = DataLoaderParams(batch_size=self.batch_size, shuffle=True)
        # Every rank validates on all of it: the ranks' metrics agree.
        self.valid_params = DataLoaderParams(batch_size=512, is_distributed=False)
        self.test_params = DataLoaderParams(batch_size=512, is_distributed=False)


class DigitsModel(Model):
    """A one-hidden-layer MLP over the 64 pixels."""

    def __init__(
        self,
        lr: float,
        hidden: int,
        dropout: float,
        optimizer: str,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        super().__init__("digits")
        self.lr, self.hidden, self.dropout, self.optimizer_name = lr, hidden, dropout, optimizer
        self.momentum, self.betas = momentum, betas

    def setup(self) -> None:
        self.net = nn.Sequential(
            nn.Linear(64, self.hidden),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden, 10),
        ).to(self.device)
        # Trains through DDP on several ranks; a partial, not a module, so checkpoints
        # hold the network once and load on any number of ranks.
        train_net: nn.Module = self.net
        if self.is_distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_net = DistributedDataParallel(self.net, device_ids=ids)
        self._forward: Callable[[torch.Tensor], torch.Tensor] = functools.partial(train_net)
        if self.optimizer_name == "adam":
            self.optimizer: torch.optim.Optimizer = torch.optim.Adam(
                self.net.parameters(), lr=self.lr, betas=self.betas
            )
        elif self.optimizer_name == "sgd":
            self.optimizer = torch.optim.SGD(
                self.net.parameters(), lr=self.lr, momentum=self.momentum
            )
        else:
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer_name!r}")
        self.optimizers = [self.optimizer]

    def train_step(self, batch: Any, state: TrainingState) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self._forward(x), y)

    def on_validation_start(self, validation_cycle: int) -> None:
        self._correct, self._loss, self._total = 0, 0.0, 0

    def valid_step(self, batch: Any, step: int) -> None:
        x, y = batch
        logits = self.net(x)
        self._correct += int((logits.argmax(dim=1) == y).sum())
        self._loss += float(F.cross_entropy(logits, y, reduction="sum"))
        self._total += len(y)

    def on_validation_end(self, validation_cycle: int) -> None:
        self.metrics["accuracy"] = self._correct / self._total
        self.metrics["loss"] = self._loss / self._total

    def have_metrics_improved(self) -> bool:
        best = self.metrics.get("best_accuracy", -1.0)
        self.metrics["best_accuracy"] = max(best, self.metrics["accuracy"])
        return self.metrics["accuracy"] > best


class SyntheticData(DataModule):
    """``batches`` empty batches per epoch and one validation batch."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.batches = batches

    def setup(self) -> None:
        self.train_dataset = TensorDataset(torch.zeros(self.batches, 1))
        self.valid_dataset = TensorDataset(torch.zeros(1, 1))


class SyntheticModel(Model):
    """A quadratic bowl in x, y and z (kind "shifted" lifts it) whose loss falls with each
    validation cycle."""

    def __init__(
        self,
        params: dict[str, Any],
        sleep_s: float = 0.0,
        exit_code: int = 0,
        fail: bool = False,
        state_bytes: int = 0,
    ) -> None:
        super().__init__("synthetic")
        self.params = params
        self.sleep_s = sleep_s
        self.exit_code = exit_code
        self.fail = fail
        self.state_bytes = state_bytes

    def setup(self) -> None:
        if self.state_bytes:  # weights that never train: they give checkpoints their size
            self.net = nn.Linear(1, max(1, self.state_bytes // 4), bias=False).to(self.device)

    def train_step(self, batch: Any, state: TrainingState) -> None:
        if self.exit_code:
            os._exit(self.exit_code)  # the process dies as in an OOM kill: nothing runs after
        if self.fail:
            raise RuntimeError("the synthetic task was asked to fail")
        if self.sleep_s:
            time.sleep(self.sleep_s)  # stands in for the cost of a real batch

    def on_validation_end(self, validation_cycle: int) -> None:
        x = float(self.params.get("x", 0.0))
        y = float(self.params.get("y", 0.0))
        z = float(self.params.get("z", 0.0))
        shift = 0.5 if self.params.get("kind") == "shifted" else 0.0
        loss = (x - 2.0) ** 2 + 0.5 * (y - 3.0) ** 2 + 0.25 * z**2 + shift
        loss += 1.0 / (1 + validation_cycle)
        self.metrics["loss"] = loss
        self.metrics["score"] = -loss
        self.metrics["cost"] = x**2  # a second metric, for constraints
