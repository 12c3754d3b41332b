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
import contextlib
import dataclasses
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_service(database_url: str, data_dir: Path) -> Iterator[str]:
    """`helios-hpo serve` on a free port until the block ends."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HELIOS_HPO_DATABASE_URL": database_url,
        "HELIOS_HPO_DATA_DIR": str(data_dir),
        "HELIOS_HPO_HEARTBEAT_INTERVAL_S": "2",
        "HELIOS_HPO_HEARTBEAT_GRACE_S": "20",
        "OMP_NUM_THREADS": "1",
    }
    with (data_dir / "service.log").open("wb") as log:
        proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the service did not start; see {data_dir / 'service.log'}")
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


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
        with running_service(url, Path(tmp)) as service:
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
