"""DDP scaling: samples/s of one trial's training at 1 and 2 ranks, side by side.

Each run is ``torchrun --standalone --nproc-per-node N`` training the same CNN on the
same data with the same global batch (each of N ranks takes 1/N of it) through the
helios ``Trainer``, as a trial with ``ranks_per_trial: N`` does; one thread per rank
on a CPU, one GPU per rank on a GPU host. Runs alternate round by round; each prints
its samples/s (median of the timed rounds, after a warm-up round) and the per-rank
ratio to 1 rank: (samples/s at N) / N / (samples/s at 1). Target on a CPU: >= 0.85.

    python bench/ddp_scaling.py                  # 1 and 2 ranks
    python bench/ddp_scaling.py --ranks 1 2 4    # on a host with 4 GPUs
    python bench/ddp_scaling.py --small          # a tiny run (CI smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import tqdm
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helios import DataLoaderParams, DataModule, Model, Trainer, TrainingState  # noqa: E402


class Data(DataModule):
    def __init__(self, samples: int, batch: int) -> None:
        super().__init__()
        self.samples, self.batch = samples, batch

    def setup(self) -> None:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(self.samples, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (self.samples,), generator=gen)
        self.train_dataset = TensorDataset(x, y)
        self.train_params = DataLoaderParams(batch_size=self.batch, shuffle=True, drop_last=True)


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]


class Cnn(Model):
    """A small CNN: most of its cost is compute, as in the image models trials train."""

    def __init__(self) -> None:
        super().__init__("cnn")

    def setup(self) -> None:
        self.net = nn.Sequential(
            *_block(3, 32), *_block(32, 64), *_block(64, 128), nn.Flatten(), nn.Linear(2048, 10)
        )
        self.net.to(self.device)
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.01, momentum=0.9)
        self.optimizers = [self.optimizer]
        self.forward: nn.Module = self.net
        if self.is_distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.net, device_ids=ids)

    def train_step(self, batch: Any, state: TrainingState) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.forward(x), y)


class Timed(Cnn):
    """Times training from its first batch (start-up and data set-up excluded)."""

    started = 0.0

    def on_training_start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.started = time.perf_counter()

    def on_training_end(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.elapsed = time.perf_counter() - self.started


def child(args: argparse.Namespace) -> None:
    """One rank of one run: train, and rank 0 writes the elapsed seconds."""
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    model = Timed()
    trainer = Trainer(
        total_steps=args.epochs, seed=0, enable_progress_bar=False, chkpt_frequency=None
    )
    trainer.fit(model, Data(args.samples, args.batch // world))
    if trainer.rank == 0:
        Path(args.out).write_text(json.dumps({"elapsed": model.elapsed}))


def run(ranks: int, args: argparse.Namespace, out: Path) -> float:
    """Samples/s of one run at ``ranks`` ranks."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={ranks}", __file__, "--child", "--out", str(out),
        "--samples", str(args.samples), "--batch", str(args.batch), "--epochs", str(args.epochs),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{ranks} ranks failed:\n{proc.stderr[-3000:]}")
    elapsed = float(json.loads(out.read_text())["elapsed"])
    steps = args.samples // args.batch  # every rank drops the last partial batch
    return float(steps * args.batch * args.epochs / elapsed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256, help="the global batch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up)")
    parser.add_argument("--small", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    warmups = 1
    if args.small:
        args.samples, args.batch, args.epochs, args.rounds, warmups = 512, 64, 1, 1, 0
    if 1 not in args.ranks:
        parser.error("--ranks must include 1, the baseline")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(
        f"device={device} samples={args.samples} global batch={args.batch} "
        f"epochs={args.epochs} rounds={args.rounds}+{warmups} warm-up"
    )
    rates: dict[int, list[float]] = {n: [] for n in args.ranks}
    with tempfile.TemporaryDirectory() as tmp:
        bar = tqdm.tqdm(total=(args.rounds + warmups) * len(args.ranks), desc="runs", disable=None)
        for round_ in range(args.rounds + warmups):
            for ranks in args.ranks:
                rate = run(ranks, args, Path(tmp) / f"r{ranks}.json")
                if round_ >= warmups:  # a first round warms page caches and imports
                    rates[ranks].append(rate)
                bar.update(1)
        bar.close()
    base = statistics.median(rates[1])
    print(f"{'ranks':>5} {'samples/s':>12} {'per rank':>10} {'per-rank ratio':>15}")
    for ranks, values in rates.items():
        rate = statistics.median(values)
        print(f"{ranks:5d} {rate:12.0f} {rate / ranks:10.0f} {rate / ranks / base:15.3f}")


if __name__ == "__main__":
    main()
