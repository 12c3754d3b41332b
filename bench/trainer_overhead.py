"""Trainer overhead: the same network, data and DataLoader trained three ways.

(a) a hand-written PyTorch loop, (b) helios ``Trainer`` + ``CUDAPlugin``,
(c) (b) + ``OptunaPlugin`` reporting to a SQLite-backed study. Variants
alternate round by round in one invocation; validation runs once per epoch.
Prints samples/s (median over the timed rounds) and each variant's ratio to (a).

    python bench/trainer_overhead.py                 # the full GPU workloads
    python bench/trainer_overhead.py --small         # a tiny CPU run (CI smoke test)

Without CUDA, (b) and (c) run without ``CUDAPlugin`` (it needs a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
import tqdm
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helios import CUDAPlugin, DataLoaderParams, DataModule, Model, Plugin, Trainer, TrainingState
from helios.plugins.optuna import OptunaPlugin


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(3072, 1024), nn.ReLU(), nn.Linear(1024, 10))


def cnn() -> nn.Module:
    def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        ]
        return [*layers, nn.MaxPool2d(2)] if pool else layers

    return nn.Sequential(
        *block(3, 32, False),
        *block(32, 64, True),
        *block(64, 128, True),
        *block(128, 256, True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, 10),
    )


WORKLOADS: dict[str, Callable[[], nn.Module]] = {"mlp": mlp, "cnn": cnn}


class Config:
    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.samples: int = args.samples
        self.valid_samples: int = max(args.samples // 5, args.batch_size)
        self.batch_size: int = args.batch_size
        self.epochs: int = args.epochs
        self.workers: int = args.num_workers
        gen = torch.Generator().manual_seed(0)
        total = self.samples + self.valid_samples
        x = torch.randn(total, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (total,), generator=gen)
        self.train = TensorDataset(x[: self.samples], y[: self.samples])
        self.valid = TensorDataset(x[self.samples :], y[self.samples :])

    @property
    def pin(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def plain_loop(cfg: Config, factory: Callable[[], nn.Module]) -> float:
    """(a): what a user writes by hand."""
    torch.manual_seed(0)
    net = factory().to(cfg.device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    train = DataLoader(
        cfg.train,
        batch_size=cfg.batch_size,
        shuffle=True,
        pin_memory=cfg.pin,
        num_workers=cfg.workers,
    )
    valid = DataLoader(
        cfg.valid, batch_size=cfg.batch_size, pin_memory=cfg.pin, num_workers=cfg.workers
    )
    for _ in range(cfg.epochs):
        net.train()
        for x, y in train:
            x = x.to(cfg.device, non_blocking=True)
            y = y.to(cfg.device, non_blocking=True)
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        net.eval()
        correct = torch.zeros((), device=cfg.device)
        with torch.no_grad():
            for x, y in valid:
                x = x.to(cfg.device, non_blocking=True)
                y = y.to(cfg.device, non_blocking=True)
                correct += (net(x).argmax(1) == y).sum()
        accuracy = correct.item() / len(cfg.valid)
    cfg.sync()
    return accuracy


class BenchData(DataModule):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg = cfg

    def setup(self) -> None:
        self.train_dataset, self.valid_dataset = self.cfg.train, self.cfg.valid
        self.train_params = DataLoaderParams(
            batch_size=self.cfg.batch_size, shuffle=True, num_workers=self.cfg.workers
        )
        self.valid_params = DataLoaderParams(
            batch_size=self.cfg.batch_size, num_workers=self.cfg.workers
        )


class BenchModel(Model):
    def __init__(self, factory: Callable[[], nn.Module], valid_size: int) -> None:
        super().__init__("bench")
        self.factory = factory
        self.valid_size = valid_size

    def setup(self) -> None:
        self.net = self.factory().to(self.device)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
        self.optimizers = [self.opt]

    def train_step(self, batch: Any, state: TrainingState) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)

    def on_validation_start(self, validation_cycle: int) -> None:
        self.correct = torch.zeros((), device=self.device)

    def valid_step(self, batch: Any, step: int) -> None:
        x, y = batch
        self.correct += (self.net(x).argmax(1) == y).sum()

    def on_validation_end(self, validation_cycle: int) -> None:
        self.metrics["accuracy"] = self.correct.item() / self.valid_size


def _device_plugins(cfg: Config) -> list[Plugin]:
    return [CUDAPlugin()] if cfg.device.type == "cuda" else []


class _AskedNeverPrunes(optuna.pruners.MedianPruner):
    """Does the median pruner's work, then lets every trial run: (c) times whole runs."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        super().prune(study, trial)
        return False


def helios_run(cfg: Config, factory: Callable[[], nn.Module], study: optuna.Study | None) -> float:
    """(b) without a study, (c) with one."""
    torch.manual_seed(0)
    plugins = _device_plugins(cfg)
    trial = study.ask() if study is not None else None
    if trial is not None:
        plugins.append(OptunaPlugin(trial, "accuracy"))
    trainer = Trainer(
        total_steps=cfg.epochs,
        seed=0,
        device=cfg.device,
        plugins=plugins,
        enable_progress_bar=False,
    )
    model = BenchModel(factory, len(cfg.valid))
    trainer.fit(model, BenchData(cfg))
    cfg.sync()
    accuracy = model.metrics["accuracy"]
    if study is not None and trial is not None:
        study.tell(trial, accuracy)
    return accuracy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    args = parser.parse_args(argv)
    if args.small:
        args.samples, args.batch_size, args.epochs, args.rounds = 512, 64, 1, 1
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = Config(args)
    device_note = "CUDAPlugin" if cfg.device.type == "cuda" else "no CUDAPlugin (CPU)"
    print(
        f"device={cfg.device} samples={cfg.samples} batch={cfg.batch_size} epochs={cfg.epochs} "
        f"rounds={args.rounds}+1 warm-up; (b),(c) with {device_note}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        study = optuna.create_study(
            storage=f"sqlite:///{Path(tmp) / 'bench.db'}",
            direction="maximize",
            pruner=_AskedNeverPrunes(),
        )
        variants: dict[str, Callable[[Callable[[], nn.Module]], float]] = {
            "a: plain loop": lambda f: plain_loop(cfg, f),
            "b: Trainer+CUDAPlugin": lambda f: helios_run(cfg, f, None),
            "c: b+OptunaPlugin(SQLite)": lambda f: helios_run(cfg, f, study),
        }
        rows = []
        runs = len(args.workloads) * len(variants) * (args.rounds + 1)
        with tqdm.tqdm(total=runs, desc="runs", disable=None) as bar:
            for workload in args.workloads:
                factory = WORKLOADS[workload]
                times: dict[str, list[float]] = {name: [] for name in variants}
                for round_ in range(args.rounds + 1):
                    for name, run in variants.items():
                        start = time.perf_counter()
                        run(factory)
                        elapsed = time.perf_counter() - start
                        if round_ > 0:  # round 0 warms up caches, allocators, cuDNN
                            times[name].append(elapsed)
                        bar.update(1)
                samples = cfg.samples * cfg.epochs
                rates = {name: samples / statistics.median(t) for name, t in times.items()}
                base = rates["a: plain loop"]
                rows += [(workload, name, rate, rate / base) for name, rate in rates.items()]

    print(f"{'workload':8} {'variant':28} {'samples/s':>12} {'ratio to a':>10}")
    for workload, name, rate, ratio in rows:
        print(f"{workload:8} {name:28} {rate:12.0f} {ratio:10.3f}")


if __name__ == "__main__":
    main()
