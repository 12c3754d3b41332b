"""How long creating a study takes when it copies many trials: a warm start from a study
of ``--trials`` finished trials, and as many ``enqueue_trials``.

The service (``POST /studies`` in-process, its rows added in bulk in one transaction)
runs side by side with the baseline, Optuna's own path for the same trials
(``Study.add_trials`` and ``Study.enqueue_trial``, a transaction per trial), which the
service used before. Prints each time and the ratio (service / Optuna).

    python bench/study_creation.py                        # SQLite, 5,000 trials
    python bench/study_creation.py --postgres postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fastapi.testclient import TestClient  # noqa: E402

from service.api import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.storage.db import make_engine, normalize_url, optuna_storage  # noqa: E402
from service.storage.migrations import upgrade  # noqa: E402
from service.storage.optuna_writes import add_trials  # noqa: E402

SPACE = {
    "x": optuna.distributions.FloatDistribution(-10, 10),
    "y": optuna.distributions.IntDistribution(-10, 10),
}


@contextmanager
def database(postgres: str | None, folder: Path) -> Iterator[str]:
    """A fresh database: a SQLite file, or a database made on the PostgreSQL server."""
    if postgres is None:
        yield f"sqlite:///{folder / 'bench.db'}"
        return
    admin = create_engine(normalize_url(postgres), isolation_level="AUTOCOMMIT")
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield normalize_url(postgres).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def finished(n: int) -> list[optuna.trial.FrozenTrial]:
    return [
        optuna.trial.create_trial(
            params={"x": (i % 200) / 10 - 10, "y": i % 21 - 10}, distributions=SPACE, value=i
        )
        for i in range(n)
    ]


def queued(n: int) -> list[dict[str, float]]:
    return [{"x": (i % 200) / 10 - 10, "y": i % 21 - 10} for i in range(n)]


def run(url: str, folder: Path, n: int) -> dict[str, float]:
    upgrade(url)
    settings = Settings(database_url=url, data_dir=folder / "data")
    storage = optuna_storage(url)
    times: dict[str, float] = {}
    with TestClient(create_app(settings, supervise=False)) as client:
        source = {"name": "source", "task": "synthetic", "n_trials": 1}
        assert client.post("/studies", json=source).status_code == 201
        engine = make_engine(url)
        with engine.begin() as conn:
            add_trials(conn, storage.get_study_id_from_name("source"), finished(n))
        engine.dispose()
        for kind, extra in (
            ("warm start", {"warm_start": {"from_study": "source"}}),
            ("enqueue_trials", {"enqueue_trials": queued(n)}),
        ):
            spec = {"name": f"s{len(times)}", "task": "synthetic", **extra}
            start = time.perf_counter()
            response = client.post("/studies", json=spec)
            times[f"service {kind}"] = time.perf_counter() - start
            assert response.status_code == 201, response.text
    # The baseline: the same trials through Optuna, as the service wrote them before.
    copies = optuna.load_study(study_name="source", storage=storage).get_trials(deepcopy=False)
    start = time.perf_counter()
    optuna.create_study(storage=storage, study_name="o-warm").add_trials(copies)
    times["optuna warm start"] = time.perf_counter() - start
    start = time.perf_counter()
    study = optuna.create_study(storage=storage, study_name="o-enqueue")
    for params in queued(n):
        study.enqueue_trial(params)
    times["optuna enqueue_trials"] = time.perf_counter() - start
    storage.remove_session()
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=5000)
    parser.add_argument("--postgres", help="a PostgreSQL server's URL (default: SQLite)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    with tempfile.TemporaryDirectory() as tmp, database(args.postgres, Path(tmp)) as url:
        times = run(url, Path(tmp), args.trials)
    engine = "PostgreSQL" if args.postgres else "SQLite"
    print(f"{args.trials} trials on {engine}")
    for kind in ("warm start", "enqueue_trials"):
        ours, theirs = times[f"service {kind}"], times[f"optuna {kind}"]
        print(
            f"{kind:15} service {ours:7.2f} s   optuna {theirs:7.2f} s   ratio {ours / theirs:.3f}"
        )


if __name__ == "__main__":
    main()
