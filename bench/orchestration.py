"""Orchestration overhead: a trivial objective through the service vs raw Optuna processes.

The trivial objective has 2 parameters and reports 10 intermediate values
to a MedianPruner. Three runs share one database, side by side:

(a) ``raw helios``: N raw ``study.optimize`` processes, each trial training the
    ``synthetic`` task in a helios Trainer with OptunaPlugin, as a user would
    write it by hand: the same objective the service runs, so (c)/(a) is the
    service's orchestration overhead;
(b) ``raw bare``: the same search with the synthetic task's arithmetic as a
    plain function (no helios): (c)/(b) adds helios' per-trial cost;
(c) the service: the same search submitted over HTTP, N local workers.

Each time includes starting the processes. Prints trials/s, both ratios,
the steady ratio (c)/(a) between the first and the last finished trial,
and the time from POST to the first RUNNING trial.

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

from service.client import follow_study

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


def helios_objective(trial: optuna.Trial) -> float:
    """The synthetic task trained by helios with OptunaPlugin, written by hand."""
    from helios import Trainer
    from helios.plugins.optuna import OptunaPlugin
    from service.tasks.registry import get_task

    task = get_task("synthetic")
    plugin = OptunaPlugin(trial, "loss")
    params = {**task.default_params, **plugin.suggest_all(task.default_search_space)}
    run = task.build(params, {**task.default_task_args, "epochs": REPORTS})
    trainer = Trainer(**run.trainer_args, enable_progress_bar=False, plugins=[plugin])
    trainer.fit(run.model, run.datamodule)
    return float(run.model.metrics["loss"])


OBJECTIVES = {"bare": objective, "helios": helios_objective}


def raw_worker(database_url: str, study_name: str, n_trials: int, kind: str) -> None:
    """One raw Optuna process: optimize until the shared budget is spent."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from service.storage.db import optuna_storage

    study = optuna.load_study(
        study_name=study_name,
        storage=optuna_storage(database_url),
        sampler=optuna.samplers.TPESampler(),
        pruner=optuna.pruners.MedianPruner(),
    )
    budget = optuna.study.MaxTrialsCallback(
        n_trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    )
    study.optimize(OBJECTIVES[kind], callbacks=[budget])


def run_raw(database_url: str, name: str, workers: int, n_trials: int, kind: str) -> float:
    from service.storage.db import optuna_storage

    optuna.create_study(study_name=name, storage=optuna_storage(database_url))
    start = time.perf_counter()
    procs = [
        subprocess.Popen(  # noqa: S603
            [sys.executable, __file__, "_raw", database_url, name, str(n_trials), kind],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for _ in range(workers)
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a raw worker failed with {proc.returncode}")
    return time.perf_counter() - start


def steady_rate(database_url: str, name: str) -> float:
    """Trials/s between the first and the last finished trial (start-up excluded)."""
    from service.storage.db import optuna_storage

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
def running_service(
    database_url: str, data_dir: Path, extra_env: dict[str, str] | None = None
) -> Any:
    """`helios-hpo serve` on a free port until the block ends; yields its URL."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HELIOS_HPO_DATABASE_URL": database_url,
        "HELIOS_HPO_DATA_DIR": str(data_dir),
        **(extra_env or {}),
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
        first_running: float | None = None

        def note(study: dict[str, Any]) -> None:
            nonlocal first_running
            counts = study["counts"]
            if first_running is None and counts["RUNNING"] + counts["COMPLETE"] + counts["PRUNED"]:
                first_running = time.perf_counter() - start

        study = follow_study(
            lambda: client.get(f"/studies/{name}").json(),
            # Fine polling only until the first trial runs: polls load the database too.
            interval_s=lambda _: 0.01 if first_running is None else 0.5,
            on_poll=note,
        )
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
        from service.storage.migrations import upgrade

        upgrade(url)
        rows = []
        with running_service(url, data_dir) as service_url:
            runs = len(args.workers) * args.rounds * 3
            with tqdm.tqdm(total=runs, desc="runs", disable=None) as bar:
                for workers in args.workers:
                    times: dict[str, list[float]] = {"helios": [], "bare": [], "service": []}
                    steady: dict[str, list[float]] = {"helios": [], "service": []}
                    first_s = []
                    for round_ in range(args.rounds):
                        tag = f"w{workers}-r{round_}-{os.getpid()}"
                        for kind in ("helios", "bare"):
                            name = f"raw-{kind}-{tag}"
                            times[kind].append(run_raw(url, name, workers, args.trials, kind))
                            if kind in steady:
                                steady[kind].append(steady_rate(url, name))
                            bar.update(1)
                        elapsed, first = run_service(
                            service_url, f"svc-{tag}", workers, args.trials
                        )
                        times["service"].append(elapsed)
                        steady["service"].append(steady_rate(url, f"svc-{tag}"))
                        first_s.append(first)
                        bar.update(1)
                    rate = {k: args.trials / statistics.median(v) for k, v in times.items()}
                    steady_ratio = statistics.median(steady["service"]) / statistics.median(
                        steady["helios"]
                    )
                    rows.append((workers, rate, steady_ratio, max(first_s)))

    backend = url.split(":", 1)[0]
    print(f"database={backend} trials={args.trials} reports/trial={REPORTS} rounds={args.rounds}")
    print("trials/s include process start; steady = first to last finished trial")
    print("ratio = service / raw helios (same objective); bare ratio = service / raw bare")
    header = (
        "workers",
        "raw helios/s",
        "raw bare/s",
        "service/s",
        "ratio",
        "steady",
        "bare ratio",
        "POST->RUNNING s",
    )
    print("{:>7} {:>12} {:>10} {:>9} {:>6} {:>6} {:>10} {:>15}".format(*header))
    for workers, rate, steady_ratio, first in rows:
        ratio = rate["service"] / rate["helios"]
        bare = rate["service"] / rate["bare"]
        rates = f"{rate['helios']:12.2f} {rate['bare']:10.2f} {rate['service']:9.2f}"
        print(f"{workers:>7} {rates} {ratio:6.2f} {steady_ratio:6.2f} {bare:10.2f} {first:15.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_raw":
        raw_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    else:
        main()
