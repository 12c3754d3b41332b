"""Study reads at 10,000 trials: the service's SQL aggregates vs loading every trial.

Builds a finished study of ``--trials`` trials with ``--steps`` intermediate
values each, starts the service on it, and times ``GET /studies/{name}`` and
``GET /studies/{name}/trials?limit=100`` over loopback HTTP. The baseline,
timed in the same run, is what a service built on Optuna's API would do:
``study.trials`` and counting and picking the best in Python.

Then ``--writers`` workers (8) start adding trials to the same study while an
open-loop generator reads the summary and the page at ``--rate`` (100/s) for
``--seconds`` (30): their p50 and p99 under writing, and the CPU seconds the
service, the workers and PostgreSQL used meanwhile.

    python bench/study_summary.py                       # 10,000 trials on SQLite
    python bench/study_summary.py --database-url postgresql://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import optuna
import psutil
import sqlalchemy
import tqdm
from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.load import LoadResult, open_loop  # noqa: E402
from bench.orchestration import running_service  # noqa: E402
from service.api import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.storage import optuna_tables as ot  # noqa: E402
from service.storage.db import normalize_url, optuna_storage  # noqa: E402
from service.storage.migrations import upgrade  # noqa: E402

NAME = "big"


def populate(url: str, data_dir: Path, n_trials: int, steps: int, sleep_s: float = 0) -> None:
    """A study that already spent its budget: the supervisor starts no worker for it."""
    settings = Settings(database_url=url, data_dir=data_dir)
    with TestClient(create_app(settings, supervise=False)) as client:
        spec = {
            "name": NAME,
            "task": "synthetic",
            "n_trials": n_trials,
            "task_args": {"sleep_s": sleep_s},  # for workers started later
        }
        response = client.post("/studies", json=spec)
        response.raise_for_status()
    add_trials(url, NAME, n_trials, steps)


def add_trials(url: str, name: str, n_trials: int, steps: int, seed: int = 0) -> None:
    """Add ``n_trials`` finished trials of the synthetic space (30% pruned) to study ``name``.

    The rows are the ones Optuna's ``add_trials`` writes, inserted a chunk at a time:
    Optuna's own path runs about 70 statements per trial (45 ms each on PostgreSQL here,
    so 8 minutes for 10,000). A test reads them back through Optuna.
    """
    engine = sqlalchemy.create_engine(normalize_url(url))
    rng = random.Random(seed)  # noqa: S311 (test data)
    dists = {
        "x": optuna.distributions.FloatDistribution(-10, 10),
        "y": optuna.distributions.IntDistribution(-10, 10),
    }
    dist_json = {k: optuna.distributions.distribution_to_json(d) for k, d in dists.items()}
    chunk = 500
    with engine.begin() as conn:
        study_id = conn.scalar(
            sqlalchemy.select(ot.optuna_studies.c.study_id).where(
                ot.optuna_studies.c.study_name == name
            )
        )
        number = (
            conn.scalar(
                sqlalchemy.select(sqlalchemy.func.count()).where(
                    ot.optuna_trials.c.study_id == study_id
                )
            )
            or 0
        )
    with tqdm.tqdm(total=n_trials, desc="trials", disable=None) as bar:
        for start in range(0, n_trials, chunk):
            size = min(chunk, n_trials - start)
            drawn = []
            for _ in range(size):
                x, y = rng.uniform(-10, 10), rng.randint(-10, 10)
                drawn.append((x, y, (x - 2) ** 2 + 0.5 * (y - 3) ** 2, rng.random() < 0.3))
            now = dt.datetime.now()
            with engine.begin() as conn:
                ids = conn.scalars(
                    sqlalchemy.insert(ot.optuna_trials).returning(
                        ot.optuna_trials.c.trial_id, sort_by_parameter_order=True
                    ),
                    [
                        {
                            "number": number + i,
                            "study_id": study_id,
                            "state": "PRUNED" if pruned else "COMPLETE",
                            "datetime_start": now,
                            "datetime_complete": now,
                        }
                        for i, (_, _, _, pruned) in enumerate(drawn)
                    ],
                ).all()
                params, values, steps_rows = [], [], []
                for trial_id, (x, y, loss, pruned) in zip(ids, drawn, strict=True):
                    for key, value in (("x", x), ("y", y)):
                        params.append(
                            {
                                "trial_id": trial_id,
                                "param_name": key,
                                "param_value": dists[key].to_internal_repr(value),
                                "distribution_json": dist_json[key],
                            }
                        )
                    if not pruned:
                        values.append(
                            {
                                "trial_id": trial_id,
                                "objective": 0,
                                "value": loss,
                                "value_type": "FINITE",
                            }
                        )
                    steps_rows += [
                        {
                            "trial_id": trial_id,
                            "step": s,
                            "intermediate_value": loss + 1 / (1 + s),
                            "intermediate_value_type": "FINITE",
                        }
                        for s in range(steps)
                    ]
                conn.execute(sqlalchemy.insert(ot.optuna_trial_params), params)
                if values:
                    conn.execute(sqlalchemy.insert(ot.optuna_trial_values), values)
                if steps_rows:
                    conn.execute(
                        sqlalchemy.insert(ot.optuna_trial_intermediate_values),
                        steps_rows,
                    )
            number += size
            bar.update(size)
    engine.dispose()
    analyze(url)


def analyze(url: str) -> None:
    """Refresh PostgreSQL's planner statistics after a bulk load.

    Autovacuum does this within a minute of such a load on a default server; the
    benchmark machine's server runs without autovacuum, where the planner would
    guess at a 10,000-trial table as if it were empty.
    """
    if not url.startswith("postgresql"):
        return
    engine = sqlalchemy.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("ANALYZE"))
    engine.dispose()


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return statistics.median(ordered) * 1000, p99 * 1000


def time_http(url: str, path: str, n: int) -> list[float]:
    samples = []
    with httpx.Client(base_url=url, timeout=30) as client:
        client.get(path).raise_for_status()  # warm up
        for _ in range(n):
            start = time.perf_counter()
            client.get(path).raise_for_status()
            samples.append(time.perf_counter() - start)
    return samples


def time_optuna(url: str, n: int) -> list[float]:
    storage = optuna_storage(url)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        study = optuna.load_study(study_name=NAME, storage=storage)
        trials = study.trials
        Counter(t.state.name for t in trials)
        min((t.value for t in trials if t.value is not None), default=None)
        samples.append(time.perf_counter() - start)
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--baseline-runs", type=int, default=5)
    parser.add_argument("--database-url", help="an empty database; default: a temp SQLite file")
    parser.add_argument("--writers", type=int, default=8, help="workers writing during the load")
    parser.add_argument("--rate", type=float, default=100, help="reads/s under the writers")
    parser.add_argument("--seconds", type=float, default=30, help="of reads under the writers")
    parser.add_argument(
        "--writer-sleep-s", type=float, default=0.1, help="per epoch of a writer's trial"
    )
    parser.add_argument(
        "--writer-backends-nice",
        type=int,
        default=0,
        help="PostgreSQL on this host (as root): the niceness given to the server processes "
        "of the writers' connections during the reads, to measure what their CPU costs",
    )
    args = parser.parse_args(argv)
    if args.writer_backends_nice and not (args.database_url or "").startswith("postgres"):
        parser.error("--writer-backends-nice needs --database-url postgresql://... on this host")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        url = args.database_url or f"sqlite:///{data_dir / 'bench.db'}"
        upgrade(url)
        populate(url, data_dir, args.trials, args.steps, sleep_s=args.writer_sleep_s)
        baseline = time_optuna(url, args.baseline_runs)
        env = {"OMP_NUM_THREADS": "1"}
        with running_service(url, data_dir, env) as service_url:
            summary = time_http(service_url, f"/studies/{NAME}", args.requests)
            page = time_http(service_url, f"/studies/{NAME}/trials?limit=100", args.requests)
            # The reads under the writers; then, given a niceness, again with the writers'
            # server processes lowered, side by side.
            rounds = [0, args.writer_backends_nice] if args.writer_backends_nice else [0]
            loads = []
            for nice in rounds if args.writers else []:
                with renicing_workers(url, nice):
                    loaded, written, cpu = under_writers(
                        service_url, args.writers, args.rate, args.seconds
                    )
                loads.append((nice, loaded, written, cpu))
    base50, base99 = percentiles(baseline)
    backend = url.split(":", 1)[0]
    print(f"database={backend} trials={args.trials} intermediate values/trial={args.steps}")
    print(f"{'read':42} {'p50 ms':>8} {'p99 ms':>8} {'baseline p50 / p50':>19}")
    print(f"{'optuna study.trials + counts + best':42} {base50:8.1f} {base99:8.1f} {1.0:19.1f}")
    for label, samples in (
        ("GET /studies/{name}", summary),
        ("GET /studies/{name}/trials?limit=100", page),
    ):
        p50, p99 = percentiles(samples)
        print(f"{label:42} {p50:8.1f} {p99:8.1f} {base50 / p50:19.1f}")
    for nice, loaded, written, cpu in loads:
        backends = f", their server processes at nice {nice}" if nice else ""
        print(
            f"under {args.writers} writing workers{backends}: {args.rate:g} reads/s for "
            f"{args.seconds:g} s, {loaded.requests} requests, {len(loaded.errors)} errors, "
            f"{written} trials written meanwhile"
        )
        for label, path in (("GET /studies/{name}", SUMMARY), ("GET /studies/{name}/trials", PAGE)):
            p50 = statistics.median(loaded.by_path[path])
            print(f"{label + ' under writers':42} {p50:8.1f} {loaded.percentile(0.99, path):8.1f}")
        shares = ", ".join(f"{group} {cpu[group]:.1f}" for group in CPU_GROUPS)
        print(
            f"CPU seconds meanwhile ({os.cpu_count()} cores x {args.seconds:g} s = "
            f"{(os.cpu_count() or 1) * args.seconds:g}): {shares}"
        )


SUMMARY, PAGE = f"/studies/{NAME}", f"/studies/{NAME}/trials?limit=100"


@contextlib.contextmanager
def renicing_workers(url: str, nice: int) -> Iterator[None]:
    """While the block runs, every 0.5 s, give the server processes of the workers'
    connections (application_name ``helios-hpo worker``) niceness ``nice``."""
    if not nice:
        yield
        return
    engine = sqlalchemy.create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
    done = threading.Event()
    query = sqlalchemy.text(
        "SELECT pid FROM pg_stat_activity "
        "WHERE application_name = 'helios-hpo worker' AND datname = current_database()"
    )

    def renice() -> None:
        with engine.connect() as conn:
            while not done.wait(0.5):
                for (pid,) in conn.execute(query):
                    with contextlib.suppress(ProcessLookupError):
                        os.setpriority(os.PRIO_PROCESS, pid, nice)

    thread = threading.Thread(target=renice, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        engine.dispose()


def under_writers(
    url: str, writers: int, rate: float, seconds: float
) -> tuple[LoadResult, int, Counter[str]]:
    """Reads at ``rate`` while ``writers`` workers add trials; (the reads, trials written,
    CPU seconds by process group meanwhile)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        before = client.get(SUMMARY).json()
        room = {"n_trials": before["n_trials"] + 100_000, "workers": {"count": writers}}
        client.patch(SUMMARY, json=room).raise_for_status()  # a finished study continues
        if before["status"] == "stopped":  # by an earlier round
            client.post(f"{SUMMARY}/resume").raise_for_status()
        deadline = time.monotonic() + 300
        while True:  # the writers have started once each has finished a trial
            workers = [
                w for w in client.get(f"{SUMMARY}/workers").json() if w["state"] == "running"
            ]
            if len(workers) == writers and all(w["trials_run"] >= 1 for w in workers):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"{writers} workers did not start writing: {workers}")
            time.sleep(0.5)
        start = client.get(f"{PAGE[: PAGE.index('?')]}?limit=1").json()["total"]
        cpu_before = cpu_by_group()
        result = asyncio.run(open_loop(url, rate, seconds, {}, [SUMMARY, PAGE]))
        cpu = cpu_by_group()
        cpu.subtract(cpu_before)
        end = client.get(f"{PAGE[: PAGE.index('?')]}?limit=1").json()["total"]
        client.post(f"{SUMMARY}/stop").raise_for_status()
    return result, end - start, cpu


CPU_GROUPS = ("service", "workers", "PostgreSQL", "load generator", "other")


def cpu_by_group() -> Counter[str]:
    """CPU seconds (user and system) used so far by the processes on this host, by what
    they are. The service's and PostgreSQL's exited children count as workers and
    PostgreSQL; other processes that exit take their seconds with them."""
    me = os.getpid()
    used: Counter[str] = Counter()
    for proc in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times, cmdline = proc.info["cpu_times"], proc.info["cmdline"] or []
        if times is None:
            continue
        children = times.children_user + times.children_system
        if proc.pid == me:
            group = "load generator"
        elif proc.info["name"] == "postgres":
            group = "PostgreSQL"
            used[group] += children  # the postmaster's exited backends
        elif cmdline[1:4] == ["-m", "service.cli", "serve"]:
            group = "service"
            used["workers"] += children  # exited workers
        elif cmdline[1:4] == ["-m", "service.cli", "worker"]:
            group = "workers"
        else:
            group = "other"
        used[group] += times.user + times.system
    return used


if __name__ == "__main__":
    main()
