"""Does a warm start pay? Trials a digits search needs to reach an earlier search's best,
started cold and warm-started from that earlier search's COMPLETE trials.

The earlier search runs ``--first`` trials; its best accuracy is the target. Then, per
seed, two searches with the same seeded TPESampler and the objective a service worker
runs (bench/pruning.py's): the cold one (the baseline) from nothing, the warm one with
the earlier trials copied in first, as a spec's ``warm_start`` does. Each runs until one
of its own trials reaches the target, at most ``--budget`` trials. Prints the trials
each needed per seed and the ratio of their means (warm / cold; a search that never
reached the target counts as ``--budget`` + 1).

    python bench/warm_start.py              # 30 earlier trials, 3 seeds, budget 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

import optuna
import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.pruning import objective  # noqa: E402


def trials_to_reach(
    target: float, seed: int, budget: int, epochs: int, copies: list[optuna.trial.FrozenTrial]
) -> int | None:
    """Own trials a search needs until one reaches ``target`` (None: not within budget)."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.add_trials(copies)
    own: list[float] = []

    def stop_at_target(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        own.append(trial.value if trial.value is not None else float("-inf"))
        if own[-1] >= target:
            study.stop()

    study.optimize(objective("digits", epochs), n_trials=budget, callbacks=[stop_at_target])
    return len(own) if own and own[-1] >= target else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--first", type=int, default=30, help="trials of the earlier search")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    import torch

    torch.set_num_threads(1)  # a tiny MLP: threads cost more than they give
    first = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=1000))
    first.optimize(objective("digits", args.epochs), n_trials=args.first)
    copies = first.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    target = first.best_value
    rows = []
    for seed in tqdm.tqdm(range(args.seeds), desc="seeds", disable=None):
        cold = trials_to_reach(target, seed, args.budget, args.epochs, [])
        warm = trials_to_reach(target, seed, args.budget, args.epochs, copies)
        rows.append((seed, cold, warm))
    print(
        f"task=digits epochs/trial={args.epochs} earlier trials={args.first} "
        f"(best accuracy {100 * target:.2f} %) copied={len(copies)} budget={args.budget}"
    )
    print(f"{'seed':>4} {'cold trials':>11} {'warm trials':>11}")

    def shown(n: int | None) -> str:
        return str(n) if n is not None else f">{args.budget}"

    for seed, cold, warm in rows:
        print(f"{seed:4d} {shown(cold):>11} {shown(warm):>11}")
    cold_mean = statistics.mean(c if c is not None else args.budget + 1 for _, c, _ in rows)
    warm_mean = statistics.mean(w if w is not None else args.budget + 1 for _, _, w in rows)
    print(
        f"mean trials to reach the earlier best: cold {cold_mean:.1f}, warm {warm_mean:.1f}, "
        f"warm/cold {warm_mean / cold_mean:.2f}"
    )


if __name__ == "__main__":
    main()
