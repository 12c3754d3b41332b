"""Orchestration overhead: a trivial objective through the service vs raw Optuna processes.

The trivial objective has 2 parameters and reports 10 intermediate values
to a MedianPruner. (a) runs it in N raw ``study.optimize`` processes sharing
one budget; (b) submits the same search to the service (the ``synthetic``
task: 10 validation cycles in a helios Trainer) with N local workers. Both
use the same database; each time includes starting its processes. Prints
trials/s of each, the ratio (b)/(a), and the time from POST to the first
RUNNING trial.

    python bench/orchestration.py --workers 4 --trials 200
    python bench/orchestration.py --database-url postgresql://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import optuna
import tqdm

REPO = Path(__file__).resolve().parents[1]
REPORTS = 10


def objective(trial: optuna.Trial) -> float:
    """What the synthetic task computes, without helios: 10 reports, then the value."""
    x = trial.suggest_float("x", -10.0, 10.0)
    y = trial.suggest_int("y", -10, 10)
    loss = 0.0
    for step in range(REPORTS):
        loss = (x - 2.0) ** 2 + 0.5 * (y - 3.0) ** 2 + 1.0 / (1 + step)
        trial.report(loss, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loss


def raw_worker(database_url: str, study_name: str, n_trials: int, seed: int) -> None:
    """One raw Optuna process: optimize until the shared budget is spent."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from service.db import optuna_storage

    study = optuna.load_study(
        study_name=study_name,
        storage=optuna_storage(database_url),
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(),
    )
    budget = optuna.study.MaxTrialsCallback(
        n_trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    study.optimize(objective, callbacks=[budget])


def run_raw(database_url: str, name: str, workers: int, n_trials: int) -> float:
    from service.db import optuna_storage

    optuna.create_study(study_name=name, storage=optuna_storage(database_url))
    start = time.perf_counter()
    procs = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, __file__, "_raw", database_url, name, str(n_trials), str(i)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for i in range(workers)
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a raw worker failed with {proc.returncode}")
    return time.perf_counter() - start


def steady_rate(database_url: str, name: str) -> float:
    """Trials/s between the first and the last finished trial (start-up excluded)."""
    from service.db import optuna_storage

    study = optuna.load_study(study_name=name, storage=optuna_storage(database_url))
    done = sorted(
        t.datetime_complete
        for t in study.get_trials(
            deepcopy=False,
            states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED),
        )
        if t.datetime_complete is not None
    )
    return (len(done) - 1) / max((done[-1] - done[0]).total_seconds(), 1e-9)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_service(database_url: str, data_dir: Path) -> Any:
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HELIOS_HPO_DATABASE_URL": database_url,
        "HELIOS_HPO_DATA_DIR": str(data_dir),
    }
    log = (data_dir / "service.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the service did not start; see {data_dir / 'service.log'}")
        time.sleep(0.1)
    try:
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def run_service(url: str, name: str, workers: int, n_trials: int) -> tuple[float, float]:
    """(seconds until the study finished, seconds until its first trial ran)."""
    spec = {
        "name": name,
        "task": "synthetic",
        "sampler": {"name": "TPESampler"},
        "pruner": {"name": "MedianPruner"},
        "n_trials": n_trials,
        "max_failed_trials": 0,
        "task_args": {"epochs": REPORTS},
        "workers": {"count": workers},
    }
    with httpx.Client(base_url=url, timeout=30) as client:
        start = time.perf_counter()
        response = client.post("/studies", json=spec)
        response.raise_for_status()
        first_running = None
        while True:
            study = client.get(f"/studies/{name}").json()
            counts = study["counts"]
            if first_running is None and counts["RUNNING"] + counts["COMPLETE"] + counts["PRUNED"]:
                first_running = time.perf_counter() - start
            if study["status"] != "running":
                break
            # Fine polling only until the first trial runs: polls load the database too.
            time.sleep(0.01 if first_running is None else 0.1)
        elapsed = time.perf_counter() - start
        if study["status"] != "finished":
            raise SystemExit(f"study {name} ended {study['status']}: {study['status_reason']}")
    return elapsed, first_running or elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="service workers vs raw Optuna processes")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url", help="default: a temp SQLite file")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        url = args.database_url or f"sqlite:///{data_dir / 'bench.db'}"
        from service.migrations import upgrade

        upgrade(url)
        rows = []
        with running_service(url, data_dir) as service_url:
            runs = len(args.workers) * args.rounds * 2
            with tqdm.tqdm(total=runs, desc="runs", disable=None) as bar:
                for workers in args.workers:
                    raw_s, svc_s, first_s, raw_steady, svc_steady = [], [], [], [], []
                    for round_ in range(args.rounds):
                        tag = f"w{workers}-r{round_}-{os.getpid()}"
                        raw_s.append(run_raw(url, f"raw-{tag}", workers, args.trials))
                        raw_steady.append(steady_rate(url, f"raw-{tag}"))
                        bar.update(1)
                        elapsed, first = run_service(
                            service_url, f"svc-{tag}", workers, args.trials
                        )
                        svc_s.append(elapsed)
                        svc_steady.append(steady_rate(url, f"svc-{tag}"))
                        first_s.append(first)
                        bar.update(1)
                    raw_rate = args.trials / statistics.median(raw_s)
                    svc_rate = args.trials / statistics.median(svc_s)
                    steady = statistics.median(svc_steady) / statistics.median(raw_steady)
                    rows.append(
                        (workers, raw_rate, svc_rate, svc_rate / raw_rate, steady, max(first_s))
                    )

    backend = url.split(":", 1)[0]
    print(f"database={backend} trials={args.trials} reports/trial={REPORTS} rounds={args.rounds}")
    print("trials/s include process start; the steady ratio is first to last finished trial")
    header = ("workers", "raw trials/s", "service trials/s", "ratio", "steady", "POST->RUNNING s")
    print("{:>7} {:>13} {:>17} {:>6} {:>6} {:>16}".format(*header))
    for workers, raw_rate, svc_rate, ratio, steady, first in rows:
        rates = f"{raw_rate:13.2f} {svc_rate:17.2f}"
        print(f"{workers:>7} {rates} {ratio:6.2f} {steady:6.2f} {first:16.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_raw":
        raw_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
