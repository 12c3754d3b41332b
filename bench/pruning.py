"""Does pruning pay? A task's searches under several pruners vs NopPruner.

Each pruner runs the same searches: ``--seeds`` seeds x ``--trials`` trials, a
TPESampler seeded alike, and the objective a service worker runs (the task's
model and data in a helios ``Trainer`` with ``OptunaPlugin``, one report per
epoch, the trainer seeded from the parameters). NopPruner is the baseline: it
trains every trial to the end. Prints, per pruner, the epochs trained (all
trials, all seeds), their ratio to the baseline's, and the best value of the
task's first objective (mean over seeds of each search's best; for digits the
validation accuracy in percent).

    python bench/pruning.py                 # digits, 3 seeds x 40 trials, 10 epochs each
    python bench/pruning.py --task synthetic --seeds 5
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

from service.spec.conditions import suggest_space  # noqa: E402
from service.tasks.registry import get_task  # noqa: E402
from service.worker.training import trial_seed  # noqa: E402

PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "NopPruner (baseline)": optuna.pruners.NopPruner,
    "MedianPruner": optuna.pruners.MedianPruner,
    "MedianPruner (3 startup)": lambda: optuna.pruners.MedianPruner(n_startup_trials=3),
    "SuccessiveHalvingPruner": optuna.pruners.SuccessiveHalvingPruner,  # the service's default
    "HyperbandPruner": optuna.pruners.HyperbandPruner,
}


@dataclasses.dataclass
class Search:
    """One seed's search under one pruner."""

    epochs: int  # epochs trained over all trials (one report each)
    best: float  # best validation accuracy
    pruned: int
    seconds: float


def objective(task_name: str, epochs: int) -> Callable[[optuna.Trial], float]:
    from helios import Trainer
    from helios.plugins.optuna import OptunaPlugin

    task = get_task(task_name)
    metric = task.default_objectives[0]["metric"]

    def run(trial: optuna.Trial) -> float:
        plugin = OptunaPlugin(trial, metric)
        params = {**task.default_params, **suggest_space(plugin.suggest, task.default_search_space)}
        run = task.build(params, {**task.default_task_args, "epochs": epochs})
        trainer = Trainer(
            **run.trainer_args,
            seed=trial_seed(params),
            enable_progress_bar=False,
            plugins=[plugin],
        )
        trainer.fit(run.model, run.datamodule)
        return float(run.model.metrics[metric])

    return run


def search(
    task_name: str, pruner: optuna.pruners.BasePruner, seed: int, trials: int, epochs: int
) -> Search:
    maximize = get_task(task_name).default_objectives[0]["direction"] == "maximize"
    study = optuna.create_study(
        direction="maximize" if maximize else "minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=pruner,
    )
    start = time.perf_counter()
    study.optimize(objective(task_name, epochs), n_trials=trials)
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
    parser.add_argument("--task", default="digits", choices=["digits", "synthetic"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    import torch

    torch.set_num_threads(1)  # a tiny MLP: threads cost more than they give
    # Imports and the dataset's first load are paid here, not by the first search.
    optuna.create_study().optimize(objective(args.task, 1), n_trials=1)
    results: dict[str, list[Search]] = {}
    runs = [(name, seed) for name in PRUNERS for seed in range(args.seeds)]
    for name, seed in tqdm.tqdm(runs, desc="searches", disable=None):
        found = search(args.task, PRUNERS[name](), seed, args.trials, args.epochs)
        results.setdefault(name, []).append(found)
    baseline = results["NopPruner (baseline)"]
    base_epochs = sum(s.epochs for s in baseline)
    base_best = statistics.mean(s.best for s in baseline)
    # Accuracy in percent (points); other metrics as they are.
    scale = 100.0 if args.task == "digits" else 1.0
    print(
        f"task={args.task} seeds={args.seeds} trials/seed={args.trials} "
        f"epochs/trial={args.epochs} sampler=TPESampler(seed)"
    )
    header = (
        f"{'pruner':26} {'epochs':>7} {'vs baseline':>11} {'pruned':>7} "
        f"{'best':>10} {'diff':>8} {'seconds':>8}"
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
            scale * best,
            scale * (best - base_best),
            sum(s.seconds for s in searches),
        ]
        print(
            f"{row[0]:26} {row[1]:7d} {row[2]:11.3f} {row[3]:7d} {row[4]:10.2f} "
            f"{row[5]:+8.2f} {row[6]:8.1f}"
        )


if __name__ == "__main__":
    main()
