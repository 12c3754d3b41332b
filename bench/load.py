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
    by_path: dict[str, list[float]] = dataclasses.field(default_factory=dict)

    def percentile(self, q: float, path: str | None = None) -> float:
        """The ``q`` quantile of the latencies, of one path or of all."""
        ordered = sorted(self.latencies_ms if path is None else self.by_path[path])
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Connection:
    """One keep-alive HTTP/1.1 connection that sends GETs and reads whole responses.

    The generator shares two cores with the service and its workers: a bare
    asyncio stream costs a fraction of a full HTTP client per request.
    """

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        """The status code of ``GET path``; reconnects once if the server closed it idle."""
        for attempt in (0, 1):
            reused = self.reader is not None
            if self.reader is None:
                self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            assert self.writer is not None
            request = f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}\r\n"
            self.writer.write(request.encode())
            try:
                status_line = await self.reader.readline()
            except ConnectionError:
                status_line = b""
            if status_line:
                return await self._rest(status_line)
            self.close()
            if not reused or attempt:
                raise ConnectionError("the server closed the connection without answering")
        raise AssertionError("unreachable")

    async def _rest(self, status_line: bytes) -> int:
        assert self.reader is not None
        length, close = None, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "connection" and value.strip().lower() == "close":
                close = True
        if length is None:
            raise ConnectionError("a response without Content-Length")
        await self.reader.readexactly(length)
        if close:
            self.close()
        return int(status_line.split()[1])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


MIXED = [
    f"/studies/{STUDY}",
    f"/studies/{STUDY}/trials?limit=100",
    f"/studies/{STUDY}/trials?state=COMPLETE&limit=20",
    f"/studies/{STUDY}/best",
    f"/studies/{STUDY}/workers",
    "/studies",
    "/tasks",
]
# The baseline: the same rate of the cheapest request, the HTTP stack's own floor.
HEALTH = ["/healthz"]


async def open_loop(
    url: str, rate: float, seconds: float, headers: dict[str, str], paths: list[str]
) -> LoadResult:
    """GET ``paths`` round-robin at ``rate`` per second for ``seconds``, on schedule."""
    target = httpx.URL(url)
    host, port = target.host, target.port or 80
    latencies: list[float] = []
    by_path: dict[str, list[float]] = {path: [] for path in paths}
    errors: list[str] = []
    idle: list[_Connection] = []  # most recently used last: warm connections are reused

    async def one(path: str, start: float) -> None:
        # Latency counts from the scheduled send time: a late send is part of it.
        conn = idle.pop() if idle else _Connection(host, port, headers)
        try:
            status = await conn.get(path)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            errors.append(f"{path}: {type(exc).__name__}: {exc}")
            return
        latencies.append((time.perf_counter() - start) * 1000)
        by_path[path].append(latencies[-1])
        idle.append(conn)
        if status != 200:
            errors.append(f"{path}: {status}")

    tasks = []
    begin = time.perf_counter()
    total = int(rate * seconds)
    for i in range(total):
        due = begin + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(paths[i % len(paths)], due)))
    await asyncio.gather(*tasks)
    for conn in idle:
        conn.close()
    return LoadResult(total, errors, latencies, {}, 0, by_path)


def run_load(
    url: str,
    rate: float,
    seconds: float,
    headers: dict[str, str] | None = None,
    *,
    sleep_s: float = 0.3,
    baseline_s: float = 0,
) -> tuple[LoadResult, LoadResult | None]:
    """Submit the study, load the service, pause the study and wait for its trials.

    Returns the mixed reads' result and, with ``baseline_s``, that of ``/healthz``
    at the same rate for that long first (while the workers train too).
    """
    headers = headers or {}
    spec = {
        "name": STUDY,
        "task": "synthetic",
        "n_trials": 100_000,
        # Trials of up to 3 s (pruned ones stop sooner) that mostly wait, as a GPU-bound
        # step would; --sleep-s 0.05 makes them 10x shorter, a stress of the workers.
        "task_args": {"epochs": 10, "sleep_s": sleep_s},
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
        baseline = None
        if baseline_s:
            baseline = asyncio.run(open_loop(url, rate, baseline_s, headers, HEALTH))
        result = asyncio.run(open_loop(url, rate, seconds, headers, MIXED))
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
    return result, baseline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="mixed reads at a fixed rate, workers training")
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--sleep-s", type=float, default=0.3, help="per epoch of a trial")
    parser.add_argument("--baseline-seconds", type=float, default=10, help="of /healthz first")
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
            result, baseline = run_load(
                service,
                args.rate,
                args.seconds,
                sleep_s=args.sleep_s,
                baseline_s=args.baseline_seconds,
            )
    backend = url.split(":", 1)[0]
    print(
        f"database={backend} rate={args.rate:g}/s seconds={args.seconds:g} workers=4 "
        f"sleep_s/epoch={args.sleep_s:g}"
    )
    for label, res in (("baseline /healthz", baseline), ("mixed reads", result)):
        if res is not None:
            print(
                f"{label:18} requests={res.requests} errors={len(res.errors)} "
                f"p50={statistics.median(res.latencies_ms):.1f}ms "
                f"p99={res.percentile(0.99):.1f}ms max={max(res.latencies_ms):.1f}ms"
            )
    if baseline is not None:
        print(
            f"p99 mixed / p99 baseline = {result.percentile(0.99) / baseline.percentile(0.99):.2f}"
        )
    print(f"trials={result.trials} counts={result.counts}")


if __name__ == "__main__":
    main()
