"""Trials read from Optuna's tables in pages, by a few statements per page."""

from __future__ import annotations

import datetime as dt
import functools
import threading
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution
from sqlalchemy import (
    Integer,
    Select,
    any_,
    bindparam,
    case,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from service.read_models import TrialRead
from service.storage.optuna_queries import infeasible_clause
from service.storage.optuna_tables import (
    FINISHED_STATES,
    STATE_TYPE,
    optuna_trial_intermediate_values,
    optuna_trial_params,
    optuna_trial_values,
    optuna_trials,
)

__all__ = ["pareto_front", "trial_page", "trials_by_id"]


def pareto_front(session: Session, optuna_id: int, directions: list[str]) -> list[TrialRead]:
    """The feasible COMPLETE trials that no other feasible COMPLETE trial dominates."""
    values: dict[int, list[float]] = defaultdict(list)
    rows = session.connection().execute(
        select(
            optuna_trials.c.trial_id, optuna_trial_values.c.value, optuna_trial_values.c.value_type
        )
        .join(optuna_trial_values, optuna_trial_values.c.trial_id == optuna_trials.c.trial_id)
        .where(
            optuna_trials.c.study_id == optuna_id,
            optuna_trials.c.state == "COMPLETE",
            optuna_trial_values.c.value_type == "FINITE",
            ~infeasible_clause(),
        )
        .order_by(optuna_trials.c.trial_id, optuna_trial_values.c.objective)
    )
    for trial_id, value, _ in rows:
        values[trial_id].append(value)
    values = {tid: v for tid, v in values.items() if len(v) == len(directions)}
    signs = [1.0 if d == "minimize" else -1.0 for d in directions]
    points = {
        tid: [s * v for s, v in zip(signs, vals, strict=True)] for tid, vals in values.items()
    }
    front = [tid for tid, p in points.items() if not any(_dominates(q, p) for q in points.values())]
    return trials_by_id(session, front)


def _dominates(a: list[float], b: list[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def _page_query(by_state: bool) -> Select[Any, Any, Any, Any, Any]:
    """A page of a study's trials, optionally of one state.

    Ordered by trial id, which is the order of their numbers (Optuna numbers a
    study's trials as it creates them): the index on the study id yields it
    without sorting the study, at any offset.
    """
    where = [optuna_trials.c.study_id == bindparam("study_id")]
    if by_state:
        where.append(optuna_trials.c.state == bindparam("state", type_=STATE_TYPE))
    return (
        _TRIAL_COLUMNS.where(*where)
        .order_by(optuna_trials.c.trial_id)
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
    )


_TRIAL_COLUMNS = select(
    optuna_trials.c.trial_id,
    optuna_trials.c.number,
    optuna_trials.c.state,
    optuna_trials.c.datetime_start,
    optuna_trials.c.datetime_complete,
)


def _in_ids(column: ColumnElement[int], postgresql: bool) -> ColumnElement[bool]:
    """``column`` among the ids bound as ``ids``: one array parameter on PostgreSQL, so
    the statement's text is the same for any number of ids and psycopg prepares it (an
    expanded list of 100 ids is planned anew on every request); a list elsewhere."""
    if postgresql:
        return column == any_(bindparam("ids", type_=ARRAY(Integer)))
    return column.in_(bindparam("ids", expanding=True))


def _by_dialect(build: Callable[[bool], Select[Any]]) -> dict[bool, Select[Any]]:
    """A query in both forms of ``_in_ids``, keyed by "is PostgreSQL"."""
    return {postgresql: build(postgresql) for postgresql in (False, True)}


def _postgresql(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


_TRIALS_BY_ID = _by_dialect(
    lambda pg: _TRIAL_COLUMNS.where(_in_ids(optuna_trials.c.trial_id, pg)).order_by(
        optuna_trials.c.number
    )
)


_PAGES = {False: _page_query(by_state=False), True: _page_query(by_state=True)}


_PARAMS = _by_dialect(
    lambda pg: select(
        optuna_trial_params.c.trial_id,
        optuna_trial_params.c.param_name,
        optuna_trial_params.c.param_value,
        optuna_trial_params.c.distribution_json,
    ).where(_in_ids(optuna_trial_params.c.trial_id, pg))
)


# Values come back finite or NULL (NaN and infinities: JSON has neither), decided in SQL.
_VALUES = _by_dialect(
    lambda pg: (
        select(
            optuna_trial_values.c.trial_id,
            case((optuna_trial_values.c.value_type == "FINITE", optuna_trial_values.c.value)),
        )
        .where(_in_ids(optuna_trial_values.c.trial_id, pg))
        .order_by(optuna_trial_values.c.trial_id, optuna_trial_values.c.objective)
    )
)


_INTERMEDIATE = _by_dialect(
    lambda pg: (
        select(
            optuna_trial_intermediate_values.c.trial_id,
            optuna_trial_intermediate_values.c.step,
            case(
                (
                    optuna_trial_intermediate_values.c.intermediate_value_type == "FINITE",
                    optuna_trial_intermediate_values.c.intermediate_value,
                )
            ),
        )
        .where(_in_ids(optuna_trial_intermediate_values.c.trial_id, pg))
        .order_by(
            optuna_trial_intermediate_values.c.trial_id, optuna_trial_intermediate_values.c.step
        )
    )
)


def trial_page(
    session: Session, optuna_id: int, *, state: str | None, limit: int, offset: int
) -> list[TrialRead]:
    """One page of trials by number, optionally of one state."""
    args = {"study_id": optuna_id, "state": state, "limit": limit, "offset": offset}
    conn = session.connection()
    return _assemble(conn, conn.execute(_PAGES[state is not None], args).all())


def trials_by_id(session: Session, trial_ids: list[int]) -> list[TrialRead]:
    """Trials by id, in number order."""
    if not trial_ids:
        return []
    conn = session.connection()
    return _assemble(conn, conn.execute(_TRIALS_BY_ID[_postgresql(conn)], {"ids": trial_ids}).all())


def _assemble(conn: Connection, rows: Sequence[Row[Any, Any, Any, Any, Any]]) -> list[TrialRead]:
    """Trial rows with their params, values and intermediate values: finished trials
    read before come from ``_FinishedReads``, the others take three more queries."""
    kept = _finished_reads(conn.engine)
    reads = {row.trial_id: read for row in rows if (read := kept.get(row)) is not None}
    missing = [row for row in rows if row.trial_id not in reads]
    if missing:
        reads.update(_read_trials(conn, missing))
        kept.put([(row, reads[row.trial_id]) for row in missing if row.state in FINISHED_STATES])
    return [reads[row.trial_id] for row in rows]


def _read_trials(
    conn: Connection, rows: Sequence[Row[Any, Any, Any, Any, Any]]
) -> dict[int, TrialRead]:
    """Reads of ``rows`` by trial id, from three queries."""
    ids = {"ids": [row.trial_id for row in rows]}
    pg = _postgresql(conn)
    params: dict[int, dict[str, Any]] = defaultdict(dict)
    for tid, name, value, dist_json in conn.execute(_PARAMS[pg], ids).all():
        params[tid][name] = _distribution(dist_json).to_external_repr(value)
    values: dict[int, list[float | None]] = defaultdict(list)
    for tid, value in conn.execute(_VALUES[pg], ids).all():
        values[tid].append(value)
    intermediate: dict[int, dict[int, float | None]] = defaultdict(dict)
    for tid, step, value in conn.execute(_INTERMEDIATE[pg], ids).all():  # by step
        intermediate[tid][step] = value
    # Built from the database's typed columns: nothing to validate.
    return {
        tid: TrialRead.model_construct(
            number=number,
            state=state,
            params=params.get(tid, {}),
            values=values.get(tid) or None,
            intermediate_values=intermediate.get(tid, {}),
            datetime_start=_utc(start),
            datetime_complete=_utc(complete),
        )
        for tid, number, state, start, complete in rows
    }


FINISHED_READS_KEPT = 10_000


class _FinishedReads:
    """The reads of the ``FINISHED_READS_KEPT`` finished trials used last, by trial id.

    Optuna never changes a finished trial, so its read holds for good and a page of
    them needs no query past the page's own rows. The row's number, state and times
    must match too: SQLite gives a deleted study's largest trial ids out again.
    """

    def __init__(self) -> None:
        self._reads: OrderedDict[int, tuple[tuple[Any, ...], TrialRead]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, row: Row[Any, Any, Any, Any, Any]) -> TrialRead | None:
        with self._lock:
            kept = self._reads.get(row.trial_id)
            if kept is None or kept[0] != tuple(row):
                return None
            self._reads.move_to_end(row.trial_id)
            return kept[1]

    def put(self, reads: list[tuple[Row[Any, Any, Any, Any, Any], TrialRead]]) -> None:
        with self._lock:
            for row, read in reads:
                self._reads[row.trial_id] = (tuple(row), read)
                self._reads.move_to_end(row.trial_id)
            while len(self._reads) > FINISHED_READS_KEPT:
                self._reads.popitem(last=False)


_finished_by_engine: weakref.WeakKeyDictionary[Engine, _FinishedReads] = weakref.WeakKeyDictionary()


_finished_lock = threading.Lock()


def _finished_reads(engine: Engine) -> _FinishedReads:
    with _finished_lock:
        return _finished_by_engine.setdefault(engine, _FinishedReads())


@functools.lru_cache(maxsize=1024)
def _distribution(dist_json: str) -> BaseDistribution:
    """A parsed distribution; a study's trials share a handful of them."""
    return json_to_distribution(dist_json)


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    # Optuna stores naive local datetimes from datetime.now().
    return moment.astimezone(dt.UTC) if moment is not None else None
