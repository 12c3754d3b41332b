"""Engine and session factory for one database URL shared with Optuna."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "DB_ERRORS",
    "SERVICE_POOL",
    "WORKER_POOL",
    "Pool",
    "after_commit",
    "make_engine",
    "make_session_factory",
    "normalize_url",
    "optuna_storage",
    "redact_url",
    "session_scope",
    "study_lock",
    "with_db_retries",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

SQLITE_BUSY_TIMEOUT_S = 30


def normalize_url(url: str | URL) -> URL:
    """PostgreSQL URLs use psycopg 3 unless a driver is named."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def redact_url(url: str | URL) -> str:
    """The URL with its password hidden, for logs and messages."""
    return normalize_url(url).render_as_string(hide_password=True)


@dataclasses.dataclass(frozen=True)
class Pool:
    """Connections an engine keeps open (``size``) and may open beyond them for a while,
    and the ``application_name`` they give PostgreSQL (pg_stat_activity shows it)."""

    size: int
    overflow: int
    name: str = "helios-hpo"


# The service's API and supervisor: a few requests' database work at once.
SERVICE_POOL = Pool(size=2, overflow=4, name="helios-hpo service")
# A worker's two engines (its own and Optuna's storage): one connection each stays open,
# a second one is opened while another is in use (the study lock, the heartbeat thread).
# Many workers on one PostgreSQL: 2 open connections per worker, 4 at most.
WORKER_POOL = Pool(size=1, overflow=1, name="helios-hpo worker")


def _split_options(url: URL) -> tuple[URL, dict[str, Any]]:
    """The URL without the options that are psycopg's, and those as connect arguments.

    ``?prepare_threshold=none`` turns psycopg's prepared statements off, as a
    connection through PgBouncer < 1.21 in transaction mode needs.
    """
    if "prepare_threshold" not in url.query:
        return url, {}
    raw = url.query["prepare_threshold"]
    value = raw if isinstance(raw, str) else raw[-1]
    threshold = None if value.lower() == "none" else int(value)
    return url.difference_update_query(["prepare_threshold"]), {"prepare_threshold": threshold}


def _engine_kwargs(url: URL, pool: Pool) -> dict[str, Any]:
    if url.get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False}}
    # A URL's own ?application_name= wins (connect_args would override it).
    name = {} if "application_name" in url.query else {"application_name": pool.name}
    return {
        "pool_pre_ping": True,
        "pool_size": pool.size,
        "max_overflow": pool.overflow,
        "connect_args": {**name, **_split_options(url)[1]},
    }


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(url: str | URL, pool: Pool = SERVICE_POOL) -> Engine:
    """An engine for ``url``: SQLite in WAL mode with a busy timeout, PostgreSQL with pre-ping."""
    parsed = normalize_url(url)
    engine = create_engine(_split_options(parsed)[0], **_engine_kwargs(parsed, pool))
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit."""
    return sessionmaker(engine, expire_on_commit=False)


def optuna_storage(
    url: str | URL,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    stale_trial_callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    pool: Pool = SERVICE_POOL,
) -> optuna.storages.RDBStorage:
    """Optuna's storage on the same database, with the same connection settings."""
    parsed = normalize_url(url)
    storage = optuna.storages.RDBStorage(
        _split_options(parsed)[0].render_as_string(hide_password=False),
        engine_kwargs=_engine_kwargs(parsed, pool),
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        heartbeat_stale_trial_callback=stale_trial_callback,
        # Optuna's own check reads the schema's version on a second connection while its
        # first holds a transaction: workers starting together behind PgBouncer held
        # every server connection of its pool that way, each waiting for one more.
        skip_compatibility_check=True,
    )
    current, head = storage.get_current_version(), storage.get_head_version()
    if current != head:
        raise RuntimeError(
            f"the database's Optuna schema is at {current}, and Optuna {optuna.__version__} "
            f"needs {head}: run `optuna storage upgrade --storage URL` when the database is "
            "older, or use the Optuna version that wrote it"
        )
    if parsed.get_backend_name() == "sqlite":
        event.listen(storage.engine, "connect", _sqlite_pragmas)
    return storage


def after_commit(session: Session, action: Callable[[], None]) -> None:
    """Run ``action`` once ``session_scope`` has committed ``session``."""
    session.info.setdefault("after_commit", []).append(action)


def _run(session: Session, key: str) -> None:
    for action in session.info.pop(key, []):
        try:
            action()
        except Exception:
            log.exception("%s action %r failed", key, action)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A unit of work: commit on success (then run its after-commit hooks), roll back on
    any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        session.info.pop("after_commit", None)
        raise
    else:
        _run(session, "after_commit")
    finally:
        session.close()


# What a database outage looks like from SQLAlchemy and Optuna.
DB_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    optuna.exceptions.StorageInternalError,
)


def with_db_retries(what: str, action: Callable[[], T], give_up_after_s: float) -> T:
    """Run ``action``, retrying with backoff (0.5 s to 8 s) while the database is away."""
    delay = 0.5
    give_up = time.monotonic() + give_up_after_s
    while True:
        try:
            return action()
        except DB_ERRORS as exc:
            if time.monotonic() + delay > give_up:
                raise
            log.warning(
                "database unavailable while %s (%s); retrying in %.1f s",
                what,
                type(exc).__name__,
                delay,
            )
            time.sleep(delay)
            delay = min(delay * 2, 8.0)


_ADVISORY_NAMESPACE = 0x4850_4F  # "HPO": first key of the per-study advisory lock
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:a, :b)")
_LOCK_POLL_MIN_S, _LOCK_POLL_MAX_S = 0.002, 0.05


@contextmanager
def study_lock(engine: Engine, study_row_id: int) -> Iterator[Connection | None]:
    """The study's lock: budget checks with trial creation, and failures with their retries.

    A file lock beside a SQLite database (one host), an advisory lock on PostgreSQL.
    Yields, on PostgreSQL, the connection that holds the lock: reads may use it (it
    is rolled back at the end, so no writes); on SQLite, None.
    """
    url = engine.url
    if url.get_backend_name() == "sqlite":
        lock_path = Path(f"{url.database}.study-{study_row_id}.lock")
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield None
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    # A transaction-level lock, released when the transaction ends however it ends
    # (a session lock would outlive a crash behind PgBouncer in transaction mode).
    # Waiters poll and hold no connection meanwhile: waiting inside a transaction,
    # they could occupy every server connection of a pool while the holder needs
    # one more for the work it locked for.
    delay = _LOCK_POLL_MIN_S
    while True:
        with engine.connect() as conn:
            if conn.scalar(_TRY_LOCK, {"a": _ADVISORY_NAMESPACE, "b": study_row_id}):
                try:
                    yield conn
                finally:
                    # A lost connection took its transaction, and the lock, with it.
                    with contextlib.suppress(OperationalError, InterfaceError):
                        conn.rollback()
                return
            conn.rollback()
        time.sleep(delay * random.uniform(0.5, 1.5))  # noqa: S311 (jitter)
        delay = min(delay * 2, _LOCK_POLL_MAX_S)
