"""Per-study trial counts and best value, kept incrementally for the API's reads.

Optuna never changes a finished trial (COMPLETE, PRUNED, FAIL), so what was
counted once stays counted: a read fetches only the trials created since the
last read and those that were unfinished then. At 10,000 trials a summary reads
a handful of rows instead of aggregating all of them on every request.

A snapshot is rebuilt from every trial when a check fails (a trial it knew is
gone or renumbered, the numbers are not contiguous) and every ``REBUILD_S``
seconds, which bounds what nothing else would catch: a trial committed on
PostgreSQL after one with a larger id was read.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, select
from sqlalchemy.engine import Connection, Engine, Row

from service.storage.optuna_queries import infeasible_clause
from service.storage.optuna_tables import (
    FINISHED_STATES,
    TRIAL_STATES,
    optuna_trial_values,
    optuna_trials,
)

__all__ = ["REBUILD_S", "Best", "TrialStats", "trial_stats"]

REBUILD_S = 30.0

_ROWS = select(
    optuna_trials.c.trial_id,
    optuna_trials.c.number,
    optuna_trials.c.state,
    optuna_trial_values.c.value,
    infeasible_clause().label("infeasible"),
).outerjoin(
    optuna_trial_values,
    and_(
        optuna_trial_values.c.trial_id == optuna_trials.c.trial_id,
        optuna_trial_values.c.objective == 0,
    ),
)
# From the last trial seen on (it is read again to check it is still there).
_FROM = _ROWS.where(
    optuna_trials.c.study_id == bindparam("study_id"),
    optuna_trials.c.trial_id >= bindparam("first"),
).order_by(optuna_trials.c.trial_id)
_BY_ID = _ROWS.where(optuna_trials.c.trial_id.in_(bindparam("ids", expanding=True)))


class Best(NamedTuple):
    """The best COMPLETE trial of a single-objective study."""

    number: int
    value: float
    trial_id: int


@dataclass(frozen=True, slots=True)
class TrialStats:
    """Trials per state (every state, zeros included), the best feasible COMPLETE trial and
    how many COMPLETE trials broke a constraint."""

    counts: dict[str, int]
    best: Best | None  # None for several objectives
    infeasible: int = 0


@dataclass(frozen=True, slots=True)
class _Snapshot:
    last_id: int  # the largest trial id seen
    last_number: int  # its number
    seen: int  # trials seen
    open_ids: tuple[int, ...]  # seen unfinished: read again next time
    finished: dict[str, int]
    best: Best | None
    infeasible: int
    built_at: float


_EMPTY = _Snapshot(0, -1, 0, (), {}, None, 0, 0.0)
_caches: weakref.WeakKeyDictionary[Engine, dict[tuple[int, str | None], _Snapshot]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def trial_stats(conn: Connection, optuna_id: int, direction: str | None) -> TrialStats:
    """Counts and best trial of Optuna study ``optuna_id``, as of ``conn``'s transaction.

    Args:
        conn: the connection whose transaction the request reads in.
        optuna_id: Optuna's id of the study.
        direction: ``"minimize"`` or ``"maximize"``; None for several objectives.
    """
    key = (optuna_id, direction)
    with _lock:
        cache = _caches.setdefault(conn.engine, {})
        old = cache.get(key, _EMPTY)
        now = time.monotonic()
        if old is not _EMPTY and now - old.built_at > REBUILD_S:
            # This read counts again from every trial (at 10,000, 50 ms or more); the
            # reads meanwhile move the old snapshot on instead of each counting too.
            cache[key] = dataclasses.replace(old, built_at=now)
            old = _EMPTY
    advanced = _advance(conn, optuna_id, direction, old)
    if advanced is None:  # a check failed: count again from every trial
        advanced = _advance(conn, optuna_id, direction, _EMPTY)
        assert advanced is not None  # noqa: S101 (from nothing, nothing is checked)
    snapshot, unfinished = advanced
    cache[key] = snapshot
    counts = dict.fromkeys(TRIAL_STATES, 0)
    counts.update(snapshot.finished)
    counts.update(unfinished)
    return TrialStats(counts=counts, best=snapshot.best, infeasible=snapshot.infeasible)


def _advance(
    conn: Connection, optuna_id: int, direction: str | None, old: _Snapshot
) -> tuple[_Snapshot, Counter[str]] | None:
    """``old`` moved on to the trials created or finished since, and the unfinished per state.

    None when ``old`` no longer holds: the last trial it saw is gone or renumbered,
    a trial it saw unfinished is gone, or the new trials' numbers are not contiguous.
    """
    rows: Sequence[Row[Any, Any, Any, Any]] = conn.execute(
        _FROM, {"study_id": optuna_id, "first": old.last_id}
    ).all()
    if old.seen:
        if not rows or (rows[0].trial_id, rows[0].number) != (old.last_id, old.last_number):
            return None
        rows = rows[1:]
    reread = conn.execute(_BY_ID, {"ids": list(old.open_ids)}).all() if old.open_ids else []
    if len(reread) != len(old.open_ids):
        return None
    finished = Counter(old.finished)
    unfinished: Counter[str] = Counter()
    best, infeasible = old.best, old.infeasible
    open_ids: list[int] = []
    last_id, last_number = old.last_id, old.last_number
    for trial_id, number, state, value, broke in [*reread, *rows]:
        if trial_id > last_id:
            last_id, last_number = trial_id, number
        if state not in FINISHED_STATES:
            open_ids.append(trial_id)
            unfinished[state] += 1
            continue
        finished[state] += 1
        if state == "COMPLETE" and broke:
            infeasible += 1
        elif state == "COMPLETE" and value is not None and direction is not None:
            best = _better(best, Best(number, value, trial_id), maximize=direction == "maximize")
    seen = old.seen + len(rows)
    if old is not _EMPTY and seen - old.seen != last_number - old.last_number:
        return None
    built_at = time.monotonic() if old is _EMPTY else old.built_at
    snapshot = _Snapshot(
        last_id, last_number, seen, tuple(open_ids), dict(finished), best, infeasible, built_at
    )
    return snapshot, unfinished


def _better(best: Best | None, other: Best, *, maximize: bool) -> Best:
    """The better of two trials; on a tie, the earlier one."""
    if best is None:
        return other
    if other.value == best.value:
        return best if best.number <= other.number else other
    return other if (other.value > best.value) == maximize else best
