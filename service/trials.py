"""Reads of Optuna's own tables with SQL: counts, best values, trial pages.

Optuna's ``study.trials`` loads every trial; at 10,000 trials that takes
seconds. These queries aggregate in the database and fetch one page at a time.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections import defaultdict
from collections.abc import Sequence
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
    bindparam,
    case,
    func,
    select,
)
from sqlalchemy.engine import Connection, Row
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import BindParameter

from service.models import StudyRow
from service.schemas import TrialRead

__all__ = [
    "any_started",
    "BUDGET_STATES",
    "TRIAL_STATES",
    "budget_used",
    "budget_used_query",
    "optuna_study_id",
    "pareto_front",
    "reserved_trial",
    "silent_running_trials",
    "study_directions",
    "study_ref",
    "trial_counts",
    "trial_page",
    "trials_by_id",
    "unretried_failures",
]

# Optuna's tables, declared here for reading only (Optuna creates and migrates them).
# Its enums are native types on PostgreSQL; the names must match Optuna's.
_optuna = MetaData()
_STATE = Enum("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING", name="trialstate")
_DIRECTION = Enum("NOT_SET", "MINIMIZE", "MAXIMIZE", name="studydirection")
_VALUE_TYPE = Enum("FINITE", "INF_POS", "INF_NEG", name="trialvaluetype")
_INTERMEDIATE_TYPE = Enum("FINITE", "INF_POS", "INF_NEG", "NAN", name="trialintermediatevaluetype")
studies = Table(
    "studies", _optuna, Column("study_id", Integer, primary_key=True), Column("study_name", String)
)
study_directions_t = Table(
    "study_directions",
    _optuna,
    Column("study_direction_id", Integer, primary_key=True),
    Column("direction", _DIRECTION),
    Column("study_id", Integer),
    Column("objective", Integer),
)
trials = Table(
    "trials",
    _optuna,
    Column("trial_id", Integer, primary_key=True),
    Column("number", Integer),
    Column("study_id", Integer),
    Column("state", _STATE),
    Column("datetime_start", DateTime),
    Column("datetime_complete", DateTime),
)
trial_values = Table(
    "trial_values",
    _optuna,
    Column("trial_value_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("objective", Integer),
    Column("value", Float),
    Column("value_type", _VALUE_TYPE),
)
trial_params = Table(
    "trial_params",
    _optuna,
    Column("param_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("param_name", String),
    Column("param_value", Float),
    Column("distribution_json", Text),
)
trial_intermediate_values = Table(
    "trial_intermediate_values",
    _optuna,
    Column("trial_intermediate_value_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("step", Integer),
    Column("intermediate_value", Float),
    Column("intermediate_value_type", _INTERMEDIATE_TYPE),
)

trial_system_attributes = Table(
    "trial_system_attributes",
    _optuna,
    Column("trial_system_attribute_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("key", String),
    Column("value_json", Text),
)

trial_heartbeats = Table(
    "trial_heartbeats",
    _optuna,
    Column("trial_heartbeat_id", Integer, primary_key=True),
    Column("trial_id", Integer),
    Column("heartbeat", DateTime),
)

TRIAL_STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")
# Trials that hold a slot of the study's n_trials budget.
BUDGET_STATES = ("COMPLETE", "PRUNED", "RUNNING")


def optuna_study_id(session: Session, name: str) -> int | None:
    """Optuna's id of the study named ``name``."""
    return session.scalar(select(studies.c.study_id).where(studies.c.study_name == name))


def study_directions(session: Session, study_id: int) -> list[str]:
    """``["maximize", ...]`` in objective order."""
    rows = session.connection().execute(
        select(study_directions_t.c.direction)
        .where(study_directions_t.c.study_id == study_id)
        .order_by(study_directions_t.c.objective)
    )
    return [direction.lower() for (direction,) in rows]


# Statements of the API's hot reads, built once: per request only parameters change.
_hpo_studies = StudyRow.__table__
_STUDY_REF = (
    select(studies.c.study_id, study_directions_t.c.direction)
    .select_from(_hpo_studies)
    .join(studies, studies.c.study_name == _hpo_studies.c.name)
    .join(study_directions_t, study_directions_t.c.study_id == studies.c.study_id)
    .where(_hpo_studies.c.name == bindparam("name"))
    .order_by(study_directions_t.c.objective)
)


def study_ref(session: Session, name: str) -> tuple[int, list[str]] | None:
    """Optuna's id and directions of the service's study ``name`` (None: either is missing)."""
    rows = session.connection().execute(_STUDY_REF, {"name": name}).all()
    if not rows:
        return None
    return rows[0][0], [direction.lower() for _, direction in rows]


_COUNTS = (
    select(trials.c.state, func.count())
    .where(trials.c.study_id == bindparam("study_id"))
    .group_by(trials.c.state)
)


def trial_counts(session: Session, study_id: int) -> dict[str, int]:
    """Number of trials per state (every state present, zeros included)."""
    counts = dict.fromkeys(TRIAL_STATES, 0)
    for state, count in session.connection().execute(_COUNTS, {"study_id": study_id}):
        counts[state] = count
    return counts


def budget_used_query(study_id: int) -> Select[int]:
    """A query counting the trials that count against ``n_trials``."""
    return (
        select(func.count())
        .select_from(trials)
        .where(trials.c.study_id == study_id, trials.c.state.in_(BUDGET_STATES))
    )


def budget_used(session: Session, study_id: int) -> int:
    """Trials that count against ``n_trials``: finished COMPLETE or PRUNED, or RUNNING."""
    return int(session.scalar(budget_used_query(study_id)) or 0)


def any_started(session: Session, study_id: int) -> bool:
    """Whether any trial of the study has started (a worker asked for one)."""
    first = select(trials.c.trial_id).where(
        trials.c.study_id == study_id, trials.c.state != "WAITING"
    )
    return session.scalar(first.limit(1)) is not None


def reserved_trial(conn: Session | Connection, study_id: int, number: int) -> tuple[int, list[int]]:
    """Trial ``number``'s id and its retry history (earlier trials it retries), in one query."""
    history = (
        select(trial_system_attributes.c.value_json)
        .where(
            trial_system_attributes.c.trial_id == trials.c.trial_id,
            trial_system_attributes.c.key == "retry_history",
        )
        .scalar_subquery()
    )
    trial_id, raw = conn.execute(
        select(trials.c.trial_id, history).where(
            trials.c.study_id == study_id, trials.c.number == number
        )
    ).one()
    return int(trial_id), [int(n) for n in json.loads(raw)] if raw else []


def silent_running_trials(session: Session, study_id: int, older_than_s: float) -> list[int]:
    """RUNNING trials that never sent a heartbeat and started more than ``older_than_s`` ago.

    Optuna's stale check skips trials without a heartbeat: a worker killed between
    creating a trial and its first heartbeat would leave it RUNNING forever.
    """
    # Optuna stamps datetime_start with the local naive time of the worker.
    cutoff = dt.datetime.now() - dt.timedelta(seconds=older_than_s)  # noqa: DTZ005
    rows = session.scalars(
        select(trials.c.trial_id)
        .outerjoin(trial_heartbeats, trial_heartbeats.c.trial_id == trials.c.trial_id)
        .where(
            trials.c.study_id == study_id,
            trials.c.state == "RUNNING",
            trial_heartbeats.c.trial_id.is_(None),
            trials.c.datetime_start < cutoff,
        )
    )
    return list(rows)


def unretried_failures(session: Session, study_id: int) -> int:
    """FAIL trials that no retry took over (a retry's ``retry_history`` lists those it did)."""
    histories = session.scalars(
        select(trial_system_attributes.c.value_json)
        .join(trials, trials.c.trial_id == trial_system_attributes.c.trial_id)
        .where(trials.c.study_id == study_id, trial_system_attributes.c.key == "retry_history")
    )
    retried = {number for value in histories for number in json.loads(value)}
    failed = session.scalars(
        select(trials.c.number).where(trials.c.study_id == study_id, trials.c.state == "FAIL")
    )
    return sum(1 for number in failed if number not in retried)


def pareto_front(session: Session, study_id: int, directions: list[str]) -> list[TrialRead]:
    """The COMPLETE trials that no other COMPLETE trial dominates."""
    values: dict[int, list[float]] = defaultdict(list)
    rows = session.connection().execute(
        select(trials.c.trial_id, trial_values.c.value, trial_values.c.value_type)
        .join(trial_values, trial_values.c.trial_id == trials.c.trial_id)
        .where(
            trials.c.study_id == study_id,
            trials.c.state == "COMPLETE",
            trial_values.c.value_type == "FINITE",
        )
        .order_by(trials.c.trial_id, trial_values.c.objective)
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
    where = [trials.c.study_id == bindparam("study_id")]
    if by_state:
        where.append(trials.c.state == bindparam("state", type_=_STATE))
    return (
        _TRIAL_COLUMNS.where(*where)
        .order_by(trials.c.trial_id)
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=Integer))
    )


_TRIAL_COLUMNS = select(
    trials.c.trial_id,
    trials.c.number,
    trials.c.state,
    trials.c.datetime_start,
    trials.c.datetime_complete,
)
_IDS: BindParameter[list[int]] = bindparam("ids", expanding=True)
_TRIALS_BY_ID = _TRIAL_COLUMNS.where(trials.c.trial_id.in_(_IDS)).order_by(trials.c.number)
_PAGES = {False: _page_query(by_state=False), True: _page_query(by_state=True)}
_PARAMS = select(
    trial_params.c.trial_id,
    trial_params.c.param_name,
    trial_params.c.param_value,
    trial_params.c.distribution_json,
).where(trial_params.c.trial_id.in_(_IDS))
# Values come back finite or NULL (NaN and infinities: JSON has neither), decided in SQL.
_VALUES = (
    select(
        trial_values.c.trial_id,
        case((trial_values.c.value_type == "FINITE", trial_values.c.value)),
    )
    .where(trial_values.c.trial_id.in_(_IDS))
    .order_by(trial_values.c.trial_id, trial_values.c.objective)
)
_INTERMEDIATE = (
    select(
        trial_intermediate_values.c.trial_id,
        trial_intermediate_values.c.step,
        case(
            (
                trial_intermediate_values.c.intermediate_value_type == "FINITE",
                trial_intermediate_values.c.intermediate_value,
            )
        ),
    )
    .where(trial_intermediate_values.c.trial_id.in_(_IDS))
    .order_by(trial_intermediate_values.c.trial_id, trial_intermediate_values.c.step)
)


def trial_page(
    session: Session, study_id: int, *, state: str | None, limit: int, offset: int
) -> list[TrialRead]:
    """One page of trials by number, optionally of one state."""
    args = {"study_id": study_id, "state": state, "limit": limit, "offset": offset}
    conn = session.connection()
    return _assemble(conn, conn.execute(_PAGES[state is not None], args).all())


def trials_by_id(session: Session, trial_ids: list[int]) -> list[TrialRead]:
    """Trials by id, in number order."""
    if not trial_ids:
        return []
    conn = session.connection()
    return _assemble(conn, conn.execute(_TRIALS_BY_ID, {"ids": trial_ids}).all())


def _assemble(conn: Connection, rows: Sequence[Row[Any, Any, Any, Any, Any]]) -> list[TrialRead]:
    """Trial rows with their params, values and intermediate values: three more queries."""
    if not rows:
        return []
    ids = {"ids": [row.trial_id for row in rows]}
    params: dict[int, dict[str, Any]] = defaultdict(dict)
    for tid, name, value, dist_json in conn.execute(_PARAMS, ids).all():
        params[tid][name] = _distribution(dist_json).to_external_repr(value)
    values: dict[int, list[float | None]] = defaultdict(list)
    for tid, value in conn.execute(_VALUES, ids).all():
        values[tid].append(value)
    intermediate: dict[int, dict[int, float | None]] = defaultdict(dict)
    for tid, step, value in conn.execute(_INTERMEDIATE, ids).all():  # by step
        intermediate[tid][step] = value
    # Built from the database's typed columns: nothing to validate.
    return [
        TrialRead.model_construct(
            number=number,
            state=state,
            params=params.get(tid, {}),
            values=values.get(tid) or None,
            intermediate_values=intermediate.get(tid, {}),
            datetime_start=_utc(start),
            datetime_complete=_utc(complete),
        )
        for tid, number, state, start, complete in rows
    ]


@functools.lru_cache(maxsize=1024)
def _distribution(dist_json: str) -> BaseDistribution:
    """A parsed distribution; a study's trials share a handful of them."""
    return json_to_distribution(dist_json)


def _utc(moment: dt.datetime | None) -> dt.datetime | None:
    # Optuna stores naive local datetimes from datetime.now().
    return moment.astimezone(dt.UTC) if moment is not None else None
