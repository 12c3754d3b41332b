"""Does pruning pay? The digits task under MedianPruner and HyperbandPruner vs NopPruner.

Each pruner runs the same searches: ``--seeds`` seeds x ``--trials`` trials, a
TPESampler seeded alike, and the objective a service worker runs (the task's
model and data in a helios ``Trainer`` with ``OptunaPlugin``, one report per
epoch, the trainer seeded from the parameters). NopPruner is the baseline: it
trains every trial to the end. Prints, per pruner, the epochs trained (all
trials, all seeds), their ratio to the baseline's, and the best accuracy (mean
over seeds of each search's best).

    python bench/pruning.py                 # 3 seeds x 40 trials, 10 epochs each
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.conditions import suggest_space  # noqa: E402
from service.tasks import get_task  # noqa: E402
from service.worker import trial_seed  # noqa: E402

PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "NopPruner (baseline)": optuna.pruners.NopPruner,
    "MedianPruner": optuna.pruners.MedianPruner,  # the service's default
    "MedianPruner (3 startup)": lambda: optuna.pruners.MedianPruner(n_startup_trials=3),
    "HyperbandPruner": optuna.pruners.HyperbandPruner,
}


@dataclasses.dataclass
class Search:
    """One seed's search under one pruner."""

    epochs: int  # epochs trained over all trials (one report each)
    best: float  # best validation accuracy
    pruned: int
    seconds: float


def objective(epochs: int) -> Callable[[optuna.Trial], float]:
    from helios import Trainer
    from helios.plugins.optuna import OptunaPlugin

    task = get_task("digits")

    def run(trial: optuna.Trial) -> float:
        plugin = OptunaPlugin(trial, "accuracy")
        params = {**task.default_params, **suggest_space(plugin.suggest, task.default_search_space)}
        run = task.build(params, {**task.default_task_args, "epochs": epochs})
        trainer = Trainer(
            **run.trainer_args,
            seed=trial_seed(params),
            enable_progress_bar=False,
            plugins=[plugin],
        )
        trainer.fit(run.model, run.datamodule)
        return float(run.model.metrics["accuracy"])

    return run


def search(pruner: optuna.pruners.BasePruner, seed: int, trials: int, epochs: int) -> Search:
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed), pruner=pruner
    )
    start = time.perf_counter()
    study.optimize(objective(epochs), n_trials=trials)
    seconds = time.perf_counter() - start
    done = study.get_trials(deepcopy=False)
    return Search(
        epochs=sum(len(t.intermediate_values) for t in done),
        best=study.best_value,
        pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in done),
        seconds=seconds,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    import torch

    torch.set_num_threads(1)  # a tiny MLP: threads cost more than they give
    # Imports and the dataset's first load are paid here, not by the first search.
    optuna.create_study().optimize(objective(1), n_trials=1)
    results: dict[str, list[Search]] = {}
    runs = [(name, seed) for name in PRUNERS for seed in range(args.seeds)]
    for name, seed in tqdm.tqdm(runs, desc="searches", disable=None):
        results.setdefault(name, []).append(search(PRUNERS[name](), seed, args.trials, args.epochs))
    baseline = results["NopPruner (baseline)"]
    base_epochs = sum(s.epochs for s in baseline)
    base_best = statistics.mean(s.best for s in baseline)
    print(
        f"task=digits seeds={args.seeds} trials/seed={args.trials} epochs/trial={args.epochs} "
        "sampler=TPESampler(seed)"
    )
    header = (
        f"{'pruner':26} {'epochs':>7} {'vs baseline':>11} {'pruned':>7} "
        f"{'best acc %':>10} {'diff pts':>8} {'seconds':>8}"
    )
    print(header)
    for name, searches in results.items():
        epochs = sum(s.epochs for s in searches)
        best = statistics.mean(s.best for s in searches)
        row: list[Any] = [
            name,
            epochs,
            epochs / base_epochs,
            sum(s.pruned for s in searches),
            100 * best,
            100 * (best - base_best),
            sum(s.seconds for s in searches),
        ]
        print(
            f"{row[0]:26} {row[1]:7d} {row[2]:11.3f} {row[3]:7d} {row[4]:10.2f} "
            f"{row[5]:+8.2f} {row[6]:8.1f}"
        )


if __name__ == "__main__":
    main()
