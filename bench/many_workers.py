"""Many workers on one PostgreSQL: errors, deadlocks and the peak number of connections.

Two runs side by side on the same server, each with ``--workers`` processes
(32) sharing one budget of trials that sleep like a GPU-bound step:

- **raw Optuna (baseline)**: processes running ``study.optimize`` on
  ``RDBStorage(url)`` with Optuna's default engine settings;
- **service**: ``helios-hpo serve`` with a study of that many workers.

A separate connection polls ``pg_stat_activity`` every 0.1 s and keeps the
peak number of connections to the benchmark's database (the service's own
included). Prints per run the peak, the trials and their states, worker
processes that failed, and deadlocks (``pg_stat_database``).

    python bench/many_workers.py --database-url postgresql://postgres@127.0.0.1/bench
    python bench/many_workers.py --database-url postgresql://postgres@127.0.0.1/bench \
        --via "postgresql://postgres@127.0.0.1:6432/bench?prepare_threshold=none"
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import psycopg
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.orchestration import running_service  # noqa: E402

SLEEP_S = 0.1  # per epoch; 10 epochs a trial


@dataclasses.dataclass
class Run:
    peak_connections: int
    trials: int
    states: dict[str, int]
    failed_processes: int
    deadlocks: int
    seconds: float


class ConnectionPeak:
    """Polls pg_stat_activity for connections to one database; keeps the peak."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self.database = parsed.database
        self.conninfo = parsed.set(drivername="postgresql", database="postgres").render_as_string(
            hide_password=False
        )
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            while not self._stop.wait(0.1):
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,)
                ).fetchone()
                self.peak = max(self.peak, int(row[0]) if row else 0)

    def deadlocks(self) -> int:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            row = conn.execute(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = %s", (self.database,)
            ).fetchone()
            return int(row[0]) if row else 0

    @contextlib.contextmanager
    def watching(self) -> Iterator[ConnectionPeak]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()


def objective(trial: optuna.Trial) -> float:
    x, y = trial.suggest_float("x", -10, 10), trial.suggest_int("y", -10, 10)
    loss = (x - 2) ** 2 + 0.5 * (y - 3) ** 2
    for step in range(10):
        time.sleep(SLEEP_S)
        trial.report(loss + 1 / (1 + step), step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loss


def raw_process(url: str, name: str, n_trials: int) -> None:
    """One raw process with Optuna's default storage settings, until the budget is spent."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url))
    budget = optuna.study.MaxTrialsCallback(
        n_trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    study.optimize(objective, callbacks=[budget])


def states_of(url: str, name: str) -> dict[str, int]:
    study = optuna.load_study(study_name=name, storage=optuna.storages.RDBStorage(url))
    states: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    return states


def run_raw(url: str, workers: int, n_trials: int) -> Run:
    name = f"raw-{os.getpid()}"
    optuna.create_study(study_name=name, storage=optuna.storages.RDBStorage(url))
    peak = ConnectionPeak(url)
    deadlocks = peak.deadlocks()
    start = time.perf_counter()
    with peak.watching():
        procs = [
            subprocess.Popen(  # noqa: S603
                [sys.executable, __file__, "_raw", url, name, str(n_trials)],
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            for _ in range(workers)
        ]
        failed = sum(proc.wait() != 0 for proc in procs)
    states = states_of(url, name)
    return Run(
        peak.peak,
        sum(states.values()),
        states,
        failed,
        peak.deadlocks() - deadlocks,
        time.perf_counter() - start,
    )


def run_service(url: str, data_dir: Path, workers: int, n_trials: int, via: str | None) -> Run:
    """The service's run; with ``via`` (a PgBouncer URL) the service and workers use it."""
    peak = ConnectionPeak(url)
    deadlocks = peak.deadlocks()
    env = {"OMP_NUM_THREADS": "1", "HELIOS_HPO_HEARTBEAT_GRACE_S": "120"}
    with peak.watching(), running_service(via or url, data_dir, env) as service:
        spec = {
            "name": "many",
            "task": "synthetic",
            "n_trials": n_trials,
            "max_failed_trials": 0,
            "task_args": {"sleep_s": SLEEP_S},
            "workers": {"count": workers},
        }
        with httpx.Client(base_url=service, timeout=60) as client:
            start = time.perf_counter()
            client.post("/studies", json=spec).raise_for_status()
            deadline = time.monotonic() + 1800
            while (study := client.get("/studies/many").json())["status"] == "running":
                if time.monotonic() > deadline:
                    raise SystemExit(f"the study did not finish: {study['counts']}")
                time.sleep(1)
            seconds = time.perf_counter() - start
            runs = client.get("/studies/many/workers").json()
    states = {k: v for k, v in study["counts"].items() if v}
    return Run(
        peak.peak,
        sum(states.values()),
        states,
        sum(w["state"] in ("failed", "lost") for w in runs),
        peak.deadlocks() - deadlocks,
        seconds,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--trials", type=int, default=320)
    parser.add_argument("--database-url", required=True, help="an empty PostgreSQL database")
    parser.add_argument(
        "--via",
        help="the service and its workers connect here (PgBouncer in front of the database)",
    )
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = args.database_url
    from service.storage.migrations import upgrade

    upgrade(url)
    with tempfile.TemporaryDirectory() as tmp:
        raw = run_raw(url, args.workers, args.trials)
        service = run_service(url, Path(tmp), args.workers, args.trials, args.via)
    print(f"database=postgresql workers={args.workers} trials={args.trials}")
    print(
        f"{'run':26} {'peak connections':>16} {'per worker':>10} {'trials':>6} "
        f"{'failed processes':>16} {'deadlocks':>9} {'seconds':>8}  states"
    )
    service_label = "service via PgBouncer" if args.via else "service"
    for label, run in (("raw Optuna (baseline)", raw), (service_label, service)):
        print(
            f"{label:26} {run.peak_connections:16d} {run.peak_connections / args.workers:10.2f} "
            f"{run.trials:6d} {run.failed_processes:16d} {run.deadlocks:9d} "
            f"{run.seconds:8.1f}  {run.states}"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_raw":
        raw_process(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main()
