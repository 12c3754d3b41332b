"""Side by side with the peer a user would pick instead: the same search through
helios-hpo, Ray Tune and raw Optuna, alternating in one run.

(a) helios-hpo: ``helios-hpo serve`` (SQLite) and its local workers; the study
    is submitted over HTTP with the service's default pruner;
(b) Ray Tune: a ``Tuner`` with ``OptunaSearch`` (the same TPE sampler and seed)
    and ``ASHAScheduler`` (successive halving, as (a)'s default);
(c) raw Optuna: N processes running ``study.optimize`` on one SQLite file, the
    same sampler and pruner as (a).

Each trial is the same function: the digits MLP of the service's task registry
trained by helios for up to ``--epochs`` epochs, its parameters drawn from the
task's search space, reporting validation accuracy each epoch. Each system runs
in a child process of its own (what it starts are that child's descendants),
whose whole process tree's resident memory is sampled.

Per row (``--concurrency`` trials at a time, ``--trials`` trials): wall time
from the start to the last trial's end, start-up alone (until the first trial
started), trials/s, epochs trained, best accuracy, seconds until a trial ended
at >= 0.97, peak resident memory, and per-trial overhead (concurrency x wall
time minus the time the trials took, per trial); ratios to Ray Tune's.

    pip install -e '.[peers]'        # Ray Tune: this benchmark's only user
    python bench/peers.py --concurrency 2 4 --trials 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYSTEMS = ("helios-hpo", "ray-tune", "raw-optuna")
Result = dict[str, Any]
TARGET = 0.97  # validation accuracy a "good" trial reaches
REDUCTION = 4  # successive halving's reduction factor: Optuna's default, given to ASHA too


# The trial, the same in every system.


def fit_digits(
    params: dict[str, Any], epochs: int, on_epoch: Callable[[int, float], bool]
) -> float:
    """Train the digits MLP with ``params`` (the task's defaults for the rest); calls
    ``on_epoch(epoch, accuracy)`` after each validation, which returns True to stop;
    the last accuracy."""
    from helios import Trainer
    from helios.plugins import Plugin
    from service.tasks.registry import get_task
    from service.worker.training import trial_seed

    task = get_task("digits")
    params = {**task.default_params, **params}

    class Reporter(Plugin):
        """Calls ``on_epoch`` once per validation cycle, after the model computed its metrics."""

        def __init__(self) -> None:
            super().__init__("peers-reporter")
            self.unique_overrides.should_training_stop = True
            self.cycle: int | None = None
            self.stop = False

        def setup(self) -> None:
            self.cycle, self.stop = None, False

        def on_validation_end(self, validation_cycle: int) -> None:
            self.cycle = validation_cycle  # the model's hook computes the metrics next

        def should_training_stop(self) -> bool:
            if self.cycle is not None:
                accuracy = float(self.trainer.model.metrics["accuracy"])
                self.stop, self.cycle = on_epoch(self.cycle, accuracy), None
            return self.stop

    run = task.build(params, {**task.default_task_args, "epochs": epochs})
    trainer = Trainer(
        **run.trainer_args,
        seed=trial_seed(params),
        enable_progress_bar=False,
        plugins=[Reporter()],
    )
    trainer.fit(run.model, run.datamodule)
    return float(run.model.metrics["accuracy"])


def suggest_digits(trial: optuna.Trial) -> dict[str, Any]:
    """The digits task's search space, suggested on an Optuna trial."""
    from helios.plugins.optuna import OptunaPlugin
    from service.spec.conditions import suggest_space
    from service.tasks.registry import get_task

    suggest = OptunaPlugin(trial, "accuracy").suggest  # as a service worker suggests
    return suggest_space(suggest, get_task("digits").default_search_space)


def default_pruner() -> optuna.pruners.BasePruner:
    """The pruner the service gives a one-objective study that names none."""
    from service.spec.models import StudySpec
    from service.spec.space import build_pruner, resolve_spec
    from service.tasks.registry import get_task

    spec = resolve_spec(StudySpec(name="peers", task="digits"), get_task("digits"))
    return build_pruner(spec.pruner)


# Each system, run in a child process: ``python bench/peers.py _run SYSTEM ...``; it writes
# {"start", "first_start", "trials": [{"epochs", "value", "end", "seconds"}]} (Unix times).


def run_helios_hpo(concurrency: int, trials: int, epochs: int, seed: int, work: Path) -> Result:
    import httpx

    from bench.orchestration import running_service
    from service.client import follow_study

    start = time.time()
    url = f"sqlite:///{work / 'service.db'}"
    spec = {
        "name": "peers",
        "task": "digits",
        "n_trials": trials,
        "max_failed_trials": 0,
        "sampler": {"name": "TPESampler", "args": {"seed": seed}},
        "task_args": {"epochs": epochs},
        "workers": {"count": concurrency},
    }
    with running_service(url, work, {"OMP_NUM_THREADS": "1"}) as service:
        with httpx.Client(base_url=service, timeout=30) as client:
            client.post("/studies", json=spec).raise_for_status()
            study = follow_study(lambda: client.get("/studies/peers").json(), interval_s=0.5)
        if study["status"] != "finished":
            raise SystemExit(f"the study ended {study['status']}: {study['status_reason']}")
    return {"start": start, **_optuna_trials(url, "peers")}


def run_raw_optuna(concurrency: int, trials: int, epochs: int, seed: int, work: Path) -> Result:
    start = time.time()
    url = f"sqlite:///{work / 'optuna.db'}"
    from service.storage.db import optuna_storage

    optuna.create_study(study_name="peers", storage=optuna_storage(url), direction="maximize")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, __file__, "_optuna", url, str(trials), str(epochs), str(seed)]
    procs = [
        subprocess.Popen([*argv, str(i)], env=env)  # noqa: S603
        for i in range(concurrency)
    ]
    if any(proc.wait() != 0 for proc in procs):
        raise SystemExit("a raw Optuna process failed")
    return {"start": start, **_optuna_trials(url, "peers")}


def optuna_process(url: str, trials: int, epochs: int, seed: int, index: int) -> None:
    """One raw Optuna process: optimize until the shared budget of trials is spent."""
    import torch

    from service.storage.db import optuna_storage

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(
        study_name="peers",
        storage=optuna_storage(url),
        sampler=optuna.samplers.TPESampler(seed=seed + index),  # as the service's workers
        pruner=default_pruner(),
    )

    def objective(trial: optuna.Trial) -> float:
        pruned = []

        def on_epoch(epoch: int, accuracy: float) -> bool:
            trial.report(accuracy, epoch)
            if trial.should_prune():
                pruned.append(epoch)
            return bool(pruned)

        value = fit_digits(suggest_digits(trial), epochs, on_epoch)
        if pruned:
            raise optuna.TrialPruned(f"pruned at epoch {pruned[0]}")
        return value

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    study.optimize(objective, callbacks=[optuna.study.MaxTrialsCallback(trials, states=done)])


def _optuna_trials(url: str, name: str) -> Result:
    from service.storage.db import optuna_storage

    study = optuna.load_study(study_name=name, storage=optuna_storage(url))
    finished = [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ]
    assert all(t.datetime_start and t.datetime_complete for t in finished)  # noqa: S101
    return {
        "first_start": min(t.datetime_start.timestamp() for t in finished),  # type: ignore[union-attr]
        "trials": [
            {
                "epochs": len(t.intermediate_values),
                "value": t.intermediate_values[max(t.intermediate_values)],
                "end": t.datetime_complete.timestamp(),  # type: ignore[union-attr]
                "seconds": (t.datetime_complete - t.datetime_start).total_seconds(),  # type: ignore[operator]
            }
            for t in finished
            if t.intermediate_values
        ],
    }


def run_ray_tune(concurrency: int, trials: int, epochs: int, seed: int, work: Path) -> Result:
    start = time.time()
    try:
        import ray
        from ray import tune
        from ray.tune.schedulers import ASHAScheduler
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise SystemExit("Ray Tune is missing: pip install -e '.[peers]'") from None

    ray.init(
        num_cpus=concurrency,
        include_dashboard=False,
        object_store_memory=200 * 1024 * 1024,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}},
    )
    first_start: list[float] = []

    class FirstStart(tune.Callback):
        def on_trial_start(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:
            first_start.append(time.time())

    def trainable(config: dict[str, Any]) -> None:
        import torch

        torch.set_num_threads(1)

        def on_epoch(epoch: int, accuracy: float) -> bool:
            tune.report({"accuracy": accuracy, "epoch": epoch})
            return False  # the scheduler stops the trial itself

        fit_digits(config, epochs, on_epoch)

    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(
                space=suggest_digits,
                metric="accuracy",
                mode="max",
                sampler=optuna.samplers.TPESampler(seed=seed),
            ),
            scheduler=ASHAScheduler(
                metric="accuracy",
                mode="max",
                max_t=epochs,
                grace_period=1,
                reduction_factor=REDUCTION,
            ),
            num_samples=trials,
            max_concurrent_trials=concurrency,
            # Ray's default starts a process per trial; reused, each process trains many.
            reuse_actors=os.environ.get("PEERS_RAY_REUSE_ACTORS") == "1",
        ),
        run_config=tune.RunConfig(
            storage_path=str(work / "ray"), verbose=0, callbacks=[FirstStart()]
        ),
    )
    results = tuner.fit()
    rows = []
    for result in (results[i] for i in range(len(results))):
        if result.error is not None:
            raise SystemExit(f"a Ray Tune trial failed: {result.error}")
        last: dict[str, Any] = result.metrics or {}  # the trial's last report
        rows.append(
            {
                "epochs": int(last["training_iteration"]),
                "value": float(last["accuracy"]),
                "end": float(last["timestamp"]),
                "seconds": float(last["time_total_s"]),
            }
        )
    ray.shutdown()
    return {"start": start, "first_start": min(first_start), "trials": rows}


RUNNERS = {"helios-hpo": run_helios_hpo, "ray-tune": run_ray_tune, "raw-optuna": run_raw_optuna}


# The parent: runs each system in a child, samples its memory, prints the table.


@contextlib.contextmanager
def peak_rss(process: psutil.Process) -> Iterator[dict[str, Any]]:
    """The largest sum of resident memory over ``process`` and its descendants, sampled
    every 0.2 s while the block runs: ``bytes``, and ``by_process`` (what each kind of
    process held then: count and bytes)."""
    peak: dict[str, Any] = {"bytes": 0, "by_process": {}}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            held: dict[str, list[int]] = {}
            with contextlib.suppress(psutil.Error):
                for proc in [process, *process.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        rss = proc.memory_info().rss
                        counted = held.setdefault(_kind(proc), [0, 0])
                        counted[0] += 1
                        counted[1] += rss
            total = sum(rss for _, rss in held.values())
            if total > peak["bytes"]:
                peak.update(bytes=total, by_process=held)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


def _kind(proc: psutil.Process) -> str:
    """What a process of a system's tree is, for the memory breakdown."""
    cmdline = proc.cmdline()
    text = " ".join(cmdline)
    for marker, kind in (
        ("service.cli serve", "service"),
        ("service.cli worker", "worker"),
        ("peers.py _run", "driver"),
        ("peers.py _optuna", "optuna process"),
    ):
        if marker in text:
            return kind
    if cmdline and cmdline[0].startswith("ray::"):  # a Ray worker: its task, or IDLE
        return cmdline[0].split()[0]
    return proc.name()


def measure(system: str, concurrency: int, trials: int, epochs: int, seed: int) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"peers-{system}-") as work:
        out = Path(work) / "result.json"
        argv = [sys.executable, __file__, "_run", system, str(concurrency), str(trials)]
        argv += [str(epochs), str(seed), work, str(out)]
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        child = subprocess.Popen(argv, env=env)  # noqa: S603
        with peak_rss(psutil.Process(child.pid)) as peak:
            if child.wait() != 0:
                raise SystemExit(f"{system} failed (exit code {child.returncode})")
        result = json.loads(out.read_text())
    summary = summarize(result, concurrency, peak["bytes"])
    summary["peak_by_process"] = peak["by_process"]
    return summary


def summarize(result: Result, concurrency: int, peak_bytes: int) -> Result:
    rows = result["trials"]
    start, end = result["start"], max(t["end"] for t in rows)
    wall = end - start
    good = [t["end"] - start for t in rows if t["value"] >= TARGET]
    return {
        "wall_s": wall,
        "startup_s": result["first_start"] - start,
        "trials": len(rows),
        "trials_per_s": len(rows) / wall,
        "epochs": sum(t["epochs"] for t in rows),
        "best": max(t["value"] for t in rows),
        "to_target_s": min(good) if good else None,
        "peak_mb": peak_bytes / 2**20,
        "overhead_s": (concurrency * wall - sum(t["seconds"] for t in rows)) / len(rows),
    }


def mean(runs: list[Result]) -> Result:
    """Each column's mean over ``runs`` (of the runs that have it)."""
    means: Result = {}
    for key, _, _ in COLUMNS:
        values = [r[key] for r in runs if r[key] is not None]
        average = sum(values) / len(values) if values else None
        means[key] = average  # counts too: 4 and 5 trials are 4.5, not a rounded 4
    return means


COLUMNS = (
    ("wall_s", "wall s", "{:.1f}"),
    ("startup_s", "start-up s", "{:.1f}"),
    ("trials", "trials", "{:g}"),
    ("trials_per_s", "trials/s", "{:.2f}"),
    ("epochs", "epochs", "{:g}"),
    ("best", "best acc", "{:.4f}"),
    ("to_target_s", f"s to {TARGET}", "{:.1f}"),
    ("peak_mb", "peak MB", "{:.0f}"),
    ("overhead_s", "overhead s/trial", "{:.2f}"),
)


def table(rows: dict[tuple[int, str], Result]) -> str:
    head = "| concurrency | system | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 2)]
    for (concurrency, system), row in sorted(rows.items()):
        ray = rows.get((concurrency, "ray-tune"))
        cells = []
        for key, _, fmt in COLUMNS:
            value = row[key]
            cell = "-" if value is None else fmt.format(value)
            if ray is not None and system != "ray-tune" and value and ray[key]:
                cell += f" ({value / ray[key]:.2f}x)"
            cells.append(cell)
        lines.append(f"| {concurrency} | {system} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="helios-hpo vs Ray Tune vs raw Optuna")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument(
        "--seed", type=int, nargs="+", default=[0], help="each seed is a run of every row"
    )
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    parser.add_argument(
        "--ray-reuse-actors",
        action="store_true",
        help="Ray Tune reuses its trial processes (its default starts one per trial)",
    )
    args = parser.parse_args(argv)
    if args.ray_reuse_actors:
        os.environ["PEERS_RAY_REUSE_ACTORS"] = "1"  # read by the Ray Tune child
    import tqdm

    results: dict[tuple[int, str], list[Result]] = {}
    plan = [(seed, c, s) for seed in args.seed for c in args.concurrency for s in args.systems]
    for seed, concurrency, system in tqdm.tqdm(plan, desc="runs", unit="run"):
        results.setdefault((concurrency, system), []).append(
            measure(system, concurrency, args.trials, args.epochs, seed)
        )
    seeds = ", ".join(map(str, args.seed))
    print(f"{args.trials} trials of up to {args.epochs} epochs each, seeds {seeds}")
    if len(args.seed) > 1:
        print("means over the seeds; per seed, epochs and best accuracy below")
    print(table({key: mean(runs) for key, runs in results.items()}))
    print(f"peak memory by process (seed {args.seed[0]}), MB:")
    for (concurrency, system), runs in sorted(results.items()):
        held = sorted(runs[0]["peak_by_process"].items(), key=lambda kv: -kv[1][1])
        parts = [f"{kind} {n} x {rss / n / 2**20:.0f}" for kind, (n, rss) in held]
        print(f"  {concurrency} {system}: " + ", ".join(parts))
    if len(args.seed) > 1:
        for (concurrency, system), runs in sorted(results.items()):
            epochs = " ".join(str(r["epochs"]) for r in runs)
            best = " ".join(f"{r['best']:.4f}" for r in runs)
            print(f"{concurrency} {system}: epochs {epochs}; best {best}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_run"]:
        system, concurrency, trials, epochs, seed, work, out = sys.argv[2:9]
        result = RUNNERS[system](int(concurrency), int(trials), int(epochs), int(seed), Path(work))
        Path(out).write_text(json.dumps(result))
    elif sys.argv[1:2] == ["_optuna"]:
        url, trials, epochs, seed, index = sys.argv[2:7]
        optuna_process(url, int(trials), int(epochs), int(seed), int(index))
    else:
        main()
