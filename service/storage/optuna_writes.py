"""Trials added to an Optuna study in bulk: the rows Optuna's ``add_trials`` writes.

Optuna adds a trial in about 70 statements and its own transaction; a warm start of
5,000 trials took over a minute that way. Here each kind of row is inserted a chunk
at a time, in the caller's transaction: the trials appear together or not at all.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Sequence
from typing import Any

from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection

from service.storage import optuna_tables as ot

__all__ = ["add_trials", "set_study_system_attr"]

CHUNK = 1000


def _value(value: float) -> tuple[float | None, str]:
    if value == math.inf:
        return None, "INF_POS"
    if value == -math.inf:
        return None, "INF_NEG"
    return value, "FINITE"


def _intermediate(value: float) -> tuple[float | None, str]:
    return (None, "NAN") if math.isnan(value) else _value(value)


def add_trials(conn: Connection, optuna_id: int, trials: Sequence[FrozenTrial]) -> None:
    """Add ``trials`` (templates: their numbers and ids are ignored) to Optuna's study
    ``optuna_id``, numbered after its last trial, as ``Study.add_trials`` would."""
    if not trials:
        return
    # Optuna numbers a trial by the trials before it: its study is locked meanwhile.
    conn.execute(
        select(ot.optuna_studies.c.study_id)
        .where(ot.optuna_studies.c.study_id == optuna_id)
        .with_for_update()
    )
    first = conn.scalar(select(func.count()).where(ot.optuna_trials.c.study_id == optuna_id))
    for start in range(0, len(trials), CHUNK):
        _add_chunk(conn, optuna_id, (first or 0) + start, trials[start : start + CHUNK])


def _add_chunk(
    conn: Connection, optuna_id: int, number: int, trials: Sequence[FrozenTrial]
) -> None:
    ids = conn.scalars(
        insert(ot.optuna_trials).returning(
            ot.optuna_trials.c.trial_id, sort_by_parameter_order=True
        ),
        [
            {
                "number": number + i,
                "study_id": optuna_id,
                "state": trial.state.name,
                "datetime_start": _naive(trial.datetime_start),
                "datetime_complete": _naive(trial.datetime_complete),
            }
            for i, trial in enumerate(trials)
        ],
    ).all()
    rows: dict[Any, list[dict[str, Any]]] = {
        ot.optuna_trial_params: [],
        ot.optuna_trial_values: [],
        ot.optuna_trial_intermediate_values: [],
        ot.optuna_trial_user_attributes: [],
        ot.optuna_trial_system_attributes: [],
    }
    for trial_id, trial in zip(ids, trials, strict=True):
        for name, value in trial.params.items():
            dist = trial.distributions[name]
            rows[ot.optuna_trial_params].append(
                {
                    "trial_id": trial_id,
                    "param_name": name,
                    "param_value": dist.to_internal_repr(value),
                    "distribution_json": distribution_to_json(dist),
                }
            )
        for objective, value in enumerate(trial.values or []):
            stored, kind = _value(value)
            rows[ot.optuna_trial_values].append(
                {"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind}
            )
        for step, value in trial.intermediate_values.items():
            stored, kind = _intermediate(value)
            rows[ot.optuna_trial_intermediate_values].append(
                {
                    "trial_id": trial_id,
                    "step": step,
                    "intermediate_value": stored,
                    "intermediate_value_type": kind,
                }
            )
        for table, attrs in (
            (ot.optuna_trial_user_attributes, trial.user_attrs),
            (ot.optuna_trial_system_attributes, trial.system_attrs),
        ):
            rows[table] += [
                {"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
                for key, value in attrs.items()
            ]
    for table, values in rows.items():
        if values:
            conn.execute(insert(table), values)


def _naive(when: dt.datetime | None) -> dt.datetime | None:
    """Optuna stores local times without a zone."""
    return when.replace(tzinfo=None) if when is not None and when.tzinfo else when


def set_study_system_attr(conn: Connection, optuna_id: int, key: str, value: Any) -> None:
    """Set a system attribute of a study that does not have it yet."""
    conn.execute(
        insert(ot.optuna_study_system_attributes).values(
            study_id=optuna_id, key=key, value_json=json.dumps(value)
        )
    )
