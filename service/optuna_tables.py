"""Reads of Optuna's own tables with SQL: counts, best values, trial pages.

Optuna's ``study.trials`` loads every trial; at 10,000 trials that takes
seconds. These queries aggregate in the database and fetch one page at a time.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import threading
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from optuna.distributions import BaseDistribution, json_to_distribution
from sqlalchemy import (
    Column,
    DateTime,
    Enum,
    Float,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    any_,
    bindparam,
    case,
    cast,
    exists,
    func,
    select,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import Exists

from service.models import StudyRow
from service.schemas import TrialRead

__all__ = [
    "STOPPED_KEY",
    "any_started",
    "BUDGET_STATES",
    "FINISHED_STATES",
    "TRIAL_STATES",
    "budget_used",
    "budget_used_query",
    "WARM_START_KEY",
    "has_retry",
    "infeasible_clause",
    "optuna_study_id",
    "pareto_front",
    "reserved_trial",
    "running_trials_names_query",
    "silent_running_trials",
    "study_directions",
    "study_exists_query",
    "study_name_query",
    "study_ref",
    "study_system_attr",
    "trial_counts",
    "trial_page",
    "trials_by_id",
    "unretried_failed_trials",
    "unretried_failures",
]

# Optuna's tables, declared here for reading only (Optuna creates and migrates them).
# Its enums are native types on PostgreSQL; the names must match Optuna's.
_optuna = MetaData()
_STATE = Enum("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING", name="trialstate")
_DIRECTION = Enum("NOT_SET", "MINIMIZE", "MAXIMIZE", name="studydirection")
_VALUE_TYPE = Enum("FINITE", "INF_POS", "INF_NEG", name="trialvaluetype")
_INTERMEDIATE_TYPE = Enum("FINITE", "INF_POS", "INF_NEG", "NAN", name="trialintermediatevaluetype")
optuna_studies = Table(
    "studies", _optuna, Column("study_id", Integer, primary_key=True), Column("study_name", String)
)
optuna_study_directions = Table(
    "study_directions",
    _optuna,
    Column("study_direction_id", Integer, primary_key=True),
    Column("direction", _DIRECTION),
    Column("study_id", Integer),
    Column("objective", Integer),
)
optuna_trials = Table(
    "trials",
    _optuna,
    Column("trial_id", Integer, primary_key=True),
    Column("number", Integer),
    Column("study_id", Integer),
    Column("state", _STATE),
    Column("datetime_start", DateTime),
    Column("datetime_complete", DateTime),
)
optuna_trial_values = Table(
    "trial_values",
    _optuna,
    Column("trial_value_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("objective", Integer),
    Column("value", Float),
    Column("value_type", _VALUE_TYPE),
)
optuna_trial_params = Table(
    "trial_params",
    _optuna,
    Column("param_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("param_name", String),
    Column("param_value", Float),
    Column("distribution_json", Text),
)
optuna_trial_intermediate_values = Table(
    "trial_intermediate_values",
    _optuna,
    Column("trial_intermediate_value_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("step", Integer),
    Column("intermediate_value", Float),
    Column("intermediate_value_type", _INTERMEDIATE_TYPE),
)

optuna_trial_system_attributes = Table(
    "trial_system_attributes",
    _optuna,
    Column("trial_system_attribute_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("key", String),
    Column("value_json", Text),
)

optuna_trial_user_attributes = Table(
    "trial_user_attributes",
    _optuna,
    Column("trial_user_attribute_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("key", String),
    Column("value_json", Text),
)

optuna_study_system_attributes = Table(
    "study_system_attributes",
    _optuna,
    Column("study_system_attribute_id", Integer, primary_key=True),
    Column("study_id", Integer),
    Column("key", String),
    Column("value_json", Text),
)

# A trial copied in by a warm start carries this system attribute: it is the study's
# (the sampler learns from it, it may be the best) but spends none of its budget.
WARM_START_KEY = "helios_hpo:warm_start"
# On a trial that failed because its study was stopped: no failure of the trial.
STOPPED_KEY = "helios_hpo:stopped"

optuna_trial_heartbeats = Table(
    "trial_heartbeats",
    _optuna,
    Column("trial_heartbeat_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("heartbeat", DateTime),
)

TRIAL_STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")
# States Optuna never moves a trial out of.
FINISHED_STATES = frozenset({"COMPLETE", "PRUNED", "FAIL"})
# Trials that hold a slot of the study's n_trials budget.
BUDGET_STATES = ("COMPLETE", "PRUNED", "RUNNING")


def optuna_study_id(session: Session, name: str) -> int | None:
    """Optuna's id of the study named ``name``."""
    return session.scalar(
        select(optuna_studies.c.study_id).where(optuna_studies.c.study_name == name)
    )


def study_directions(session: Session, optuna_id: int) -> list[str]:
    """``["maximize", ...]`` in objective order."""
    rows = session.connection().execute(
        select(optuna_study_directions.c.direction)
        .where(optuna_study_directions.c.study_id == optuna_id)
        .order_by(optuna_study_directions.c.objective)
    )
    return [direction.lower() for (direction,) in rows]


# Statements of the API's hot reads, built once: per request only parameters change.
_hpo_studies = StudyRow.__table__
_STUDY_REF = (
    select(optuna_studies.c.study_id, optuna_study_directions.c.direction)
    .select_from(_hpo_studies)
    .join(optuna_studies, optuna_studies.c.study_name == _hpo_studies.c.name)
    .join(optuna_study_directions, optuna_study_directions.c.study_id == optuna_studies.c.study_id)
    .where(_hpo_studies.c.name == bindparam("name"))
    .order_by(optuna_study_directions.c.objective)
)


def study_ref(session: Session, name: str) -> tuple[int, list[str]] | None:
    """Optuna's id and directions of the service's study ``name`` (None: either is missing)."""
    rows = session.connection().execute(_STUDY_REF, {"name": name}).all()
    if not rows:
        return None
    return rows[0][0], [direction.lower() for _, direction in rows]


def _has_system_attr(*where: Any) -> Exists:
    """True for a trial with a system attribute matching ``where``."""
    attrs = optuna_trial_system_attributes
    return (
        select(attrs.c.trial_id)
        .where(attrs.c.trial_id == optuna_trials.c.trial_id, *where)
        .exists()
    )


def _warm_start_copy() -> Exists:
    """True for a trial a warm start copied in."""
    return _has_system_attr(optuna_trial_system_attributes.c.key == WARM_START_KEY)


_COUNTS = (
    select(optuna_trials.c.state, func.count())
    .where(optuna_trials.c.study_id == bindparam("study_id"), ~_warm_start_copy())
    .group_by(optuna_trials.c.state)
)


def trial_counts(session: Session, optuna_id: int) -> dict[str, int]:
    """The study's own trials per state (every state present, zeros included; warm-start
    copies left out): what its budget and failure rules count."""
    counts = dict.fromkeys(TRIAL_STATES, 0)
    for state, count in session.connection().execute(_COUNTS, {"study_id": optuna_id}):
        counts[state] = count
    return counts


def budget_used_query(optuna_id: int) -> Select[int]:
    """A query counting the trials that count against ``n_trials`` (not warm starts)."""
    return (
        select(func.count())
        .select_from(optuna_trials)
        .where(
            optuna_trials.c.study_id == optuna_id,
            optuna_trials.c.state.in_(BUDGET_STATES),
            ~_warm_start_copy(),
        )
    )


def study_system_attr(session: Session, optuna_id: int, key: str) -> Any:
    """A system attribute of Optuna's study ``optuna_id`` (None when unset)."""
    attrs = optuna_study_system_attributes
    text = session.scalar(
        select(attrs.c.value_json).where(attrs.c.study_id == optuna_id, attrs.c.key == key)
    )
    return None if text is None else json.loads(text)


def study_name_query(optuna_id: int) -> Select[str]:
    """The name of Optuna's study ``optuna_id``."""
    return select(optuna_studies.c.study_name).where(optuna_studies.c.study_id == optuna_id)


def running_trials_names_query() -> Select[str]:
    """The names of Optuna's studies that have RUNNING trials."""
    return (
        select(optuna_studies.c.study_name)
        .join(optuna_trials, optuna_trials.c.study_id == optuna_studies.c.study_id)
        .where(optuna_trials.c.state == "RUNNING")
    )


def study_exists_query(optuna_id: int) -> Exists:
    """Whether Optuna's study ``optuna_id`` exists (gone when deleted or renamed outside)."""
    return exists().where(optuna_studies.c.study_id == optuna_id)


def budget_used(session: Session, optuna_id: int) -> int:
    """Trials that count against ``n_trials``: finished COMPLETE or PRUNED, or RUNNING."""
    return int(session.scalar(budget_used_query(optuna_id)) or 0)


def any_started(session: Session, optuna_id: int) -> bool:
    """Whether any trial of the study has started (a worker asked for one)."""
    first = select(optuna_trials.c.trial_id).where(
        optuna_trials.c.study_id == optuna_id, optuna_trials.c.state != "WAITING"
    )
    return session.scalar(first.limit(1)) is not None


def reserved_trial(
    conn: Session | Connection, optuna_id: int, number: int
) -> tuple[int, list[int]]:
    """Trial ``number``'s id and its retry history (earlier trials it retries), in one query."""
    history = (
        select(optuna_trial_system_attributes.c.value_json)
        .where(
            optuna_trial_system_attributes.c.trial_id == optuna_trials.c.trial_id,
            optuna_trial_system_attributes.c.key == "retry_history",
        )
        .scalar_subquery()
    )
    trial_id, raw = conn.execute(
        select(optuna_trials.c.trial_id, history).where(
            optuna_trials.c.study_id == optuna_id, optuna_trials.c.number == number
        )
    ).one()
    return int(trial_id), [int(n) for n in json.loads(raw)] if raw else []


def silent_running_trials(conn: Connection, optuna_id: int) -> list[int]:
    """RUNNING trials that never sent a heartbeat.

    Optuna's stale check skips them: a worker killed between creating a trial and its
    first heartbeat would leave it RUNNING forever.
    """
    rows = conn.scalars(
        select(optuna_trials.c.trial_id)
        .outerjoin(
            optuna_trial_heartbeats,
            optuna_trial_heartbeats.c.trial_id == optuna_trials.c.trial_id,
        )
        .where(
            optuna_trials.c.study_id == optuna_id,
            optuna_trials.c.state == "RUNNING",
            optuna_trial_heartbeats.c.trial_id.is_(None),
        )
    )
    return list(rows)


def _retry_histories(conn: Session | Connection, optuna_id: int) -> list[list[int]]:
    """The ``retry_history`` of each retry in the study (Optuna's retry callback sets it:
    the numbers of the trials it retries, the one it replaces last)."""
    values = conn.scalars(
        select(optuna_trial_system_attributes.c.value_json)
        .join(
            optuna_trials,
            optuna_trials.c.trial_id == optuna_trial_system_attributes.c.trial_id,
        )
        .where(
            optuna_trials.c.study_id == optuna_id,
            optuna_trial_system_attributes.c.key == "retry_history",
        )
    )
    return [[int(n) for n in json.loads(value)] for value in values]


def has_retry(conn: Connection, optuna_id: int, number: int) -> bool:
    """Whether a retry of trial ``number`` was queued."""
    return any(history[-1:] == [number] for history in _retry_histories(conn, optuna_id))


def unretried_failures(session: Session | Connection, optuna_id: int) -> int:
    """How many FAIL trials no retry took over, those its study's stop ended aside."""
    return len(unretried_failed_trials(session, optuna_id))


def unretried_failed_trials(
    session: Session | Connection, optuna_id: int
) -> list[tuple[int, int, int]]:
    """FAIL trials that no retry took over (a retry's ``retry_history`` lists those it did),
    those its study's stop ended aside: ``(trial id, number, attempts)``, where attempts
    counts the trial and the earlier ones it retried."""
    retried = {number for history in _retry_histories(session, optuna_id) for number in history}
    attrs = optuna_trial_system_attributes
    stopped = select(attrs.c.trial_id).where(attrs.c.key == STOPPED_KEY)
    own_history = (
        select(attrs.c.value_json)
        .where(attrs.c.trial_id == optuna_trials.c.trial_id, attrs.c.key == "retry_history")
        .scalar_subquery()
    )
    rows = session.execute(
        select(optuna_trials.c.trial_id, optuna_trials.c.number, own_history)
        .where(
            optuna_trials.c.study_id == optuna_id,
            optuna_trials.c.state == "FAIL",
            optuna_trials.c.trial_id.not_in(stopped),
        )
        .order_by(optuna_trials.c.trial_id)
    )
    return [
        (trial_id, number, 1 + (len(json.loads(history)) if history else 0))
        for trial_id, number, history in rows
        if number not in retried
    ]


def infeasible_clause() -> Exists:
    """True for a trial with a constraint value above 0 (Optuna's ``constraints:*``
    system attributes, which the worker sets before the trial is told)."""
    attrs = optuna_trial_system_attributes
    return _has_system_attr(attrs.c.key.like("constraints:%"), cast(attrs.c.value_json, Float) > 0)


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
        where.append(optuna_trials.c.state == bindparam("state", type_=_STATE))
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
