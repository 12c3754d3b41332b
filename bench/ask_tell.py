"""Trial selection as a study grows: the worker's ask+tell vs raw Optuna's, at 0, 1k and 10k trials.

A study made through the service (TPESampler, MedianPruner, the synthetic
space) is filled with finished trials, 20 intermediate values each. At each
size the two ways to run one trial alternate, on the same study and database:

- **raw**: ``study.ask()``, suggest x and y, ``study.tell(trial, value)``;
- **worker**: what a service worker does around the training: reserve the trial
  under the study's lock (status, budget and spec read live, its id and retry
  history looked up, its first heartbeat sent), suggest x and y, record the outcome.

Prints the median milliseconds per trial of each and their ratio.

    python bench/ask_tell.py                                # SQLite
    python bench/ask_tell.py --database-url postgresql://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from fastapi.testclient import TestClient
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.study_summary import add_trials  # noqa: E402
from service.api import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.storage.migrations import upgrade  # noqa: E402
from service.trials.outcome import Outcome  # noqa: E402
from service.trials.reservation import Reservation  # noqa: E402
from service.worker.loop import Worker  # noqa: E402

NAME = "growing"


def raw_trial(study: optuna.Study) -> None:
    trial = study.ask()
    x, y = trial.suggest_float("x", -10, 10), trial.suggest_int("y", -10, 10)
    study.tell(trial, (x - 2) ** 2 + 0.5 * (y - 3) ** 2)


def worker_trial(worker: Worker) -> None:
    slot = worker.reservations.reserve(worker.trials_run)
    assert isinstance(slot, Reservation), f"the worker would stop: {slot}"
    trial = slot.trial
    x, y = trial.suggest_float("x", -10, 10), trial.suggest_int("y", -10, 10)
    worker.recorder.record(slot, Outcome(TrialState.COMPLETE, [(x - 2) ** 2 + 0.5 * (y - 3) ** 2]))
    worker.trials_run += 1


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="0,1000,10000", help="study sizes to measure at")
    parser.add_argument("--trials", type=int, default=30, help="timed trials of each, per size")
    parser.add_argument("--database-url", help="an empty database; default: a temp SQLite file")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        url = args.database_url or f"sqlite:///{data_dir / 'bench.db'}"
        upgrade(url)
        settings = Settings(database_url=url, data_dir=data_dir)
        with TestClient(create_app(settings, supervise=False)) as client:
            spec = {"name": NAME, "task": "synthetic", "n_trials": 1_000_000}
            client.post("/studies", json=spec).raise_for_status()
        worker = Worker(NAME, 1, settings)
        raw = optuna.load_study(
            study_name=NAME,
            storage=worker.storage,
            sampler=optuna.samplers.TPESampler(),
            pruner=optuna.pruners.MedianPruner(),
        )
        backend = url.split(":", 1)[0].split("+")[0]
        print(f"database={backend} sampler=TPESampler pruner=MedianPruner timed={args.trials}")
        print(f"{'trials in study':>15} {'raw ms':>8} {'worker ms':>10} {'worker / raw':>13}")
        for size in sizes:
            have = len(raw.get_trials(deepcopy=False))
            if size > have:
                add_trials(url, NAME, size - have, steps=20, seed=size)
            timed: dict[str, list[float]] = {"raw": [], "worker": []}
            for _ in range(args.trials):
                for kind in ("raw", "worker"):
                    start = time.perf_counter()
                    raw_trial(raw) if kind == "raw" else worker_trial(worker)
                    timed[kind].append(time.perf_counter() - start)
            raw_ms = statistics.median(timed["raw"]) * 1000
            worker_ms = statistics.median(timed["worker"]) * 1000
            print(f"{size:15d} {raw_ms:8.2f} {worker_ms:10.2f} {worker_ms / raw_ms:13.2f}")
        worker.heartbeat.close()


if __name__ == "__main__":
    main()
