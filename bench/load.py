"""A loopback load test: mixed reads at a fixed rate against a service whose workers train.

Starts ``helios-hpo serve`` on a free port (unless --url is given), submits a
``synthetic`` study with 4 workers whose trials sleep like a GPU-bound step,
sends GET requests at --rate per second for --seconds (open loop: a slow
answer does not slow the schedule), then pauses the study and waits for its
in-flight trials. Prints requests, errors, p50/p99/max latency, and the
study's trial counts (none may be lost or left RUNNING).

    python bench/load.py --rate 200 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

if __package__:  # imported as bench.load (the load test)
    from bench.orchestration import running_service
else:  # run as a script: bench/ is on sys.path
    from orchestration import running_service  # type: ignore[import-not-found,no-redef]

STUDY = "under-load"


@dataclasses.dataclass
class LoadResult:
    requests: int
    errors: list[str]
    latencies_ms: list[float]
    counts: dict[str, int]
    trials: int

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _load(url: str, rate: float, seconds: float, headers: dict[str, str]) -> LoadResult:
    paths = [
        f"/studies/{STUDY}",
        f"/studies/{STUDY}/trials?limit=100",
        f"/studies/{STUDY}/trials?state=COMPLETE&limit=20",
        f"/studies/{STUDY}/best",
        f"/studies/{STUDY}/workers",
        "/studies",
        "/tasks",
    ]
    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, timeout=10, limits=limits
    ) as client:

        async def one(path: str) -> None:
            start = time.perf_counter()
            try:
                response = await client.get(path)
            except httpx.HTTPError as exc:
                errors.append(f"{path}: {type(exc).__name__}")
                return
            latencies.append((time.perf_counter() - start) * 1000)
            if response.status_code != 200:
                errors.append(f"{path}: {response.status_code}")

        tasks = []
        begin = time.perf_counter()
        total = int(rate * seconds)
        for i in range(total):
            delay = begin + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(paths[i % len(paths)])))
        await asyncio.gather(*tasks)
    return LoadResult(total, errors, latencies, {}, 0)


def run_load(
    url: str, rate: float, seconds: float, headers: dict[str, str] | None = None
) -> LoadResult:
    """Submit the study, load the service, pause the study and wait for its trials."""
    headers = headers or {}
    spec = {
        "name": STUDY,
        "task": "synthetic",
        "n_trials": 100_000,
        # ~0.3 s trials that mostly wait, as a GPU-bound step would.
        "task_args": {"epochs": 6, "sleep_s": 0.05},
        "workers": {"count": 4},
    }
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        client.post("/studies", json=spec).raise_for_status()
        # Load starts once all 4 workers train (each has finished a trial): their start-up
        # (Python, torch import) is not what this measures.
        deadline = time.monotonic() + 120
        while True:
            workers = client.get(f"/studies/{STUDY}/workers").json()
            if len(workers) == 4 and all(w["trials_run"] >= 1 for w in workers):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"4 workers did not start training: {workers}")
            time.sleep(0.2)
        result = asyncio.run(_load(url, rate, seconds, headers))
        client.post(f"/studies/{STUDY}/pause").raise_for_status()
        deadline = time.monotonic() + 120
        while True:
            study: dict[str, Any] = client.get(f"/studies/{STUDY}").json()
            if study["counts"]["RUNNING"] == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"trials still RUNNING after the pause: {study['counts']}")
            time.sleep(0.2)
        result.counts = study["counts"]
        result.trials = client.get(f"/studies/{STUDY}/trials?limit=1").json()["total"]
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="mixed reads at a fixed rate, workers training")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--database-url", help="default: a temp SQLite file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'load.db'}"
        env = {
            "HELIOS_HPO_HEARTBEAT_INTERVAL_S": "2",
            "HELIOS_HPO_HEARTBEAT_GRACE_S": "20",
            "OMP_NUM_THREADS": "1",
        }
        with running_service(url, Path(tmp), env) as service:
            result = run_load(service, args.rate, args.seconds)
    backend = url.split(":", 1)[0]
    print(f"database={backend} rate={args.rate:g}/s seconds={args.seconds:g} workers=4")
    print(
        f"requests={result.requests} errors={len(result.errors)} "
        f"p50={statistics.median(result.latencies_ms):.1f}ms "
        f"p99={result.percentile(0.99):.1f}ms max={max(result.latencies_ms):.1f}ms"
    )
    print(f"trials={result.trials} counts={result.counts}")


if __name__ == "__main__":
    main()
