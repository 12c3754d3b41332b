"""What one service's supervisor costs per tick as studies grow: 1, 10 and 100 running
studies, each with 2 live workers, on one database.

The launcher is a stand-in that starts nothing: it answers every worker as running, so
a tick does exactly the service's own work (read each study, lock it, judge it, look
at its workers), none of a real launcher's. Prints the median and p95 tick time per
study count and the time per study; the baseline is the 1-study tick.

    python bench/supervisor_tick.py                        # SQLite in a temp folder
    python bench/supervisor_tick.py --postgres postgresql://postgres@127.0.0.1/postgres
        # a server: a database of its own per study count, dropped after
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.launchers import GpuScheduler, Launcher, WorkerHandle, WorkerLaunch  # noqa: E402
from service.spec.models import StudySpec, WorkersSpec  # noqa: E402
from service.storage.db import make_engine, make_session_factory, optuna_storage, session_scope  # noqa: E402
from service.storage.migrations import upgrade  # noqa: E402
from service.studies import operations  # noqa: E402
from service.supervisor.supervisor import Supervisor  # noqa: E402


class NullLauncher:
    """Starts nothing; every worker it was asked for runs forever."""

    name = "local"
    start_one_first = False

    def __init__(self) -> None:
        self.scheduler = GpuScheduler({"null": ()})
        self.on_exit: Callable[[], None] | None = None
        self.started = 0

    def spec_errors(self, workers: WorkersSpec) -> list[tuple[str, str]]:
        return []

    def start(self, launch: WorkerLaunch) -> WorkerHandle:
        self.started += 1
        return WorkerHandle(ref=f"null:{launch.worker_id}", host="null", log_path=Path("/dev/null"))

    def find(self, study: str, worker_id: int) -> WorkerHandle | None:
        return None

    def exit_code(self, ref: str) -> int | None:
        return None

    def pending(self, ref: str) -> str | None:
        return None

    def stop(self, ref: str) -> None:
        pass

    def kill(self, ref: str) -> None:
        pass

    def log_lines(self, ref: str) -> list[str] | None:
        return None

    def forget(self, ref: str, log_path: Path) -> None:
        pass

    def remove_strays(self, known: Collection[str]) -> bool:
        return True


def measure(url: str, count: int, ticks: int, data_dir: Path) -> list[float]:
    """Tick times (s) of a supervisor over ``count`` running studies of 2 workers each."""
    upgrade(url)
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    storage = optuna_storage(url)
    launcher = NullLauncher()
    launchers: dict[str, Launcher] = {"local": launcher}
    for i in range(count):
        spec = StudySpec.model_validate(
            {"name": f"tick-{count}-{i}", "task": "synthetic", "workers": {"count": 2}}
        )
        with session_scope(sessions) as session:
            operations.create_study(session, spec, storage, launchers=launchers)
    supervisor = Supervisor(
        engine,
        sessions,
        storage,
        launchers,
        interval_s=1,
        stop_timeout_s=10,
        grace_s=60,
        data_dir=data_dir,
    )
    supervisor.tick()  # adopts, starts every study's workers
    supervisor.tick()
    assert launcher.started >= 2 * count, launcher.started
    times = []
    for _ in range(ticks):
        start = time.perf_counter()
        supervisor.tick()
        times.append(time.perf_counter() - start)
    engine.dispose()
    storage.engine.dispose()
    return times


@contextlib.contextmanager
def database(server: str | None, sqlite_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a new database on ``server``, dropped after."""
    if server is None:
        yield f"sqlite:///{sqlite_path}"
        return
    from sqlalchemy import create_engine, text

    from service.storage.db import normalize_url

    admin_url = normalize_url(server)
    name = f"helios_hpo_tick_{uuid.uuid4().hex[:8]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--postgres", help="a PostgreSQL server's URL (default: SQLite)")
    parser.add_argument("--studies", nargs="+", type=int, default=[1, 10, 100])
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in tqdm.tqdm(args.studies, desc="study counts", disable=None):
            with database(args.postgres, Path(tmp) / f"tick-{count}.db") as url:
                times = measure(url, count, args.ticks, Path(tmp))
            p95 = sorted(times)[int(0.95 * (len(times) - 1))]
            rows.append((count, statistics.median(times), p95))
    base = rows[0][1]
    print(f"{'studies':>7} {'median ms':>10} {'p95 ms':>8} {'ms/study':>9} {'ratio':>7}")
    for count, median, p95 in rows:
        print(
            f"{count:7d} {median * 1e3:10.1f} {p95 * 1e3:8.1f} "
            f"{median * 1e3 / count:9.2f} {median / base:7.1f}"
        )


if __name__ == "__main__":
    main()
