"""Queries of Optuna's tables about a study: its id, counts, budget, retries."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    Float,
    Select,
    bindparam,
    cast,
    exists,
    func,
    select,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from sqlalchemy.sql.selectable import Exists

from service.storage.optuna_tables import (
    BUDGET_STATES,
    STOPPED_KEY,
    TRIAL_STATES,
    WARM_START_KEY,
    optuna_studies,
    optuna_study_directions,
    optuna_study_system_attributes,
    optuna_trial_heartbeats,
    optuna_trial_system_attributes,
    optuna_trials,
)
from service.storage.rows import StudyRow

__all__ = [
    "any_started",
    "budget_used",
    "budget_used_query",
    "has_retry",
    "infeasible_clause",
    "optuna_study_id",
    "reserved_trial",
    "running_trials_names_query",
    "silent_running_trials",
    "study_directions",
    "study_exists_query",
    "study_name_query",
    "study_ref",
    "study_system_attr",
    "trial_counts",
    "unretried_failed_trials",
    "unretried_failures",
]


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
