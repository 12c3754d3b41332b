"""Disk a study's checkpoints and models take, without retention and with it.

A synthetic study whose checkpoints and stored models are ``--state-mb`` MB each runs
twice through the service, side by side, each on its own SQLite database and data
directory:

(a) without retention: finished trials keep their working checkpoints
    (HELIOS_HPO_KEEP_FINISHED_CHECKPOINTS=true) and every COMPLETE trial its model
    (``artifacts.keep: complete``);
(b) with retention, the defaults: a finished trial's working checkpoints are deleted
    and only the best K trials keep their model (``keep_best_k``).

Prints, for each, the bytes of checkpoints and models at the end and the most seen
while it ran (``GET /studies/{name}``, polled), the ratio (b)/(a) at the end, and
the bound (b) stays under: K models, plus for each running trial two working
checkpoints (the next is written before the last is deleted) and its new model (until
the prune after the trial is told).

    python bench/retention.py --trials 200 --state-mb 1 --workers 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.orchestration import running_service  # noqa: E402
from service.client import Client  # noqa: E402

MB = 1_000_000


def run(label: str, args: argparse.Namespace, retention: bool) -> dict[str, int]:
    """One study through its own service; the end and peak bytes it held on disk."""
    with tempfile.TemporaryDirectory(prefix=f"retention-{label}-") as work:
        data_dir = Path(work) / "data"
        data_dir.mkdir()
        env = {} if retention else {"HELIOS_HPO_KEEP_FINISHED_CHECKPOINTS": "true"}
        spec: dict[str, Any] = {
            "name": label,
            "task": "synthetic",
            "n_trials": args.trials,
            "sampler": {"name": "TPESampler", "args": {"seed": 1}},
            "task_args": {"epochs": args.epochs, "state_bytes": int(args.state_mb * MB)},
            "workers": {"count": args.workers},
            "artifacts": {"keep": "best_k", "keep_best_k": args.keep}
            if retention
            else {"keep": "complete"},
        }
        peak = 0
        database = f"sqlite:///{Path(work) / 'study.db'}"
        with running_service(database, data_dir, env) as url, Client(url) as client:
            client.create_study(spec)
            with tqdm.tqdm(total=args.trials, desc=label, unit="trial", file=sys.stderr) as bar:
                while True:  # polled: the peak is what a user would have seen
                    study = client.study(label)
                    done = study["counts"]["COMPLETE"] + study["counts"]["PRUNED"]
                    if done > bar.n:
                        bar.update(done - bar.n)
                    disk = study["disk"]
                    peak = max(peak, disk["checkpoints_bytes"] + disk["artifacts_bytes"])
                    if study["status"] != "running":
                        break
                    time.sleep(0.2)
            if study["status"] != "finished":
                reason = study["status_reason"]
                raise SystemExit(f"{label}: the study ended {study['status']}: {reason}")
            disk = client.study(label)["disk"]
        return {
            "checkpoints": disk["checkpoints_bytes"],
            "models": disk["artifacts_bytes"],
            "end": disk["checkpoints_bytes"] + disk["artifacts_bytes"],
            "peak": max(peak, disk["checkpoints_bytes"] + disk["artifacts_bytes"]),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--state-mb", type=float, default=1.0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", type=int, default=5, help="keep_best_k of run (b)")
    args = parser.parse_args()
    without = run("without", args, retention=False)
    with_ = run("with", args, retention=True)
    size = args.state_mb * MB
    # Each running trial may hold two checkpoints (the next is written before the last is
    # deleted) and its new model until the prune after it is told; a model file and a
    # checkpoint each hold the state plus a little metadata.
    bound = (args.keep + 3 * args.workers) * size * 1.05
    print(
        f"trials={args.trials} state={args.state_mb} MB workers={args.workers} "
        f"keep_best_k={args.keep}"
    )
    print(f"{'run':>8} {'checkpoints_MB':>15} {'models_MB':>10} {'end_MB':>8} {'peak_MB':>8}")
    for label, result in (("without", without), ("with", with_)):
        print(
            f"{label:>8} {result['checkpoints'] / MB:15.1f} {result['models'] / MB:10.1f} "
            f"{result['end'] / MB:8.1f} {result['peak'] / MB:8.1f}"
        )
    ratio = with_["end"] / without["end"] if without["end"] else float("nan")
    print(f"ratio (with/without) at the end: {ratio:.4f}")
    verdict = "within" if with_["peak"] <= bound else "OVER"
    print(
        f"bound K models + 2 checkpoints and 1 model per running trial: {bound / MB:.1f} MB; "
        f"peak {verdict} it"
    )


if __name__ == "__main__":
    main()
