"""Warm start: an earlier study's finished trials copied into a new study.

The copies carry ``WARM_START_KEY``: the sampler learns from them and one may be the
best, but they spend none of the new study's ``n_trials``. Only trials whose parameters
are exactly what the new space searches for their values, each inside its new
distribution, are copied; the rest are counted by reason.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.spec.conditions import condition_holds, suggestion_order
from service.spec.models import StudySpec
from service.spec.space import distributions, outside
from service.storage import optuna_queries, optuna_tables
from service.storage.rows import StudyRow, StudyStatus

__all__ = ["REPORT_KEY", "warm_start_errors", "warm_start_trials"]

REPORT_KEY = "helios_hpo:warm_start_report"
_STATES = {
    "complete": (TrialState.COMPLETE,),
    "all_finished": (TrialState.COMPLETE, TrialState.PRUNED),
}


def warm_start_errors(session: Session, spec: StudySpec) -> list[tuple[str, str]]:
    """Why ``spec`` cannot start from its warm-start source: it is not there, is still
    being created or optimizes other directions; empty when it can."""
    if spec.warm_start is None:
        return []
    field, name = "warm_start.from_study", spec.warm_start.from_study
    status = session.scalar(select(StudyRow.status).where(StudyRow.name == name))
    if status == StudyStatus.CREATING:  # its trials are not all there yet
        return [(field, f"study {name!r} is still being created; start from it once it runs")]
    optuna_id = optuna_queries.optuna_study_id(session, name)
    if optuna_id is None:
        return [(field, f"no study named {name!r} to start from")]
    theirs = optuna_queries.study_directions(session, optuna_id)
    ours = [o.direction for o in spec.objectives or []]
    if theirs != ours:
        return [(field, f"{name!r} optimizes {theirs}; this study {ours}")]
    return []


def warm_start_trials(
    storage: optuna.storages.BaseStorage, spec: StudySpec
) -> tuple[list[FrozenTrial], dict[str, Any]]:
    """Copies of the fitting trials of the spec's earlier study, and the report kept with
    the new study (``{"copied": K, "skipped": {reason: count}}``)."""
    assert spec.warm_start is not None  # noqa: S101 (checked by the caller)
    source = optuna.load_study(study_name=spec.warm_start.from_study, storage=storage)
    trials = source.get_trials(deepcopy=False, states=_STATES[spec.warm_start.trials])
    dists = distributions(spec)
    space = {name: param.model_dump() for name, param in (spec.search_space or {}).items()}
    order = suggestion_order(space)
    skipped: Counter[str] = Counter()
    fitting = []
    for trial in trials:
        why = _misfit(trial, dists, space, order)
        if why is None:
            fitting.append(trial)
        else:
            skipped[why] += 1
    if spec.warm_start.limit is not None:
        fitting = _best(fitting, source.directions[0])[: spec.warm_start.limit]
    copies = [_copy(trial, dists, spec.warm_start.from_study) for trial in fitting]
    return copies, {"copied": len(fitting), "skipped": dict(skipped)}


def _misfit(
    trial: FrozenTrial,
    dists: dict[str, optuna.distributions.BaseDistribution],
    space: dict[str, dict[str, Any]],
    order: list[str],
) -> str | None:
    """Why ``trial`` does not fit the new space, or None when it does."""
    for name, value in trial.params.items():
        if name not in dists:
            return f"{name}: not in this search space"
        if outside(value, dists[name]) is not None:
            return f"{name}: outside its range here"
    searched: dict[str, Any] = {}
    for name in order:
        if condition_holds(space[name].get("when"), searched):
            if name not in trial.params:
                return f"{name}: searched here, absent from the trial"
            searched[name] = trial.params[name]
        elif name in trial.params:
            return f"{name}: not searched here for the trial's values"
    return None


def _best(trials: list[FrozenTrial], direction: optuna.study.StudyDirection) -> list[FrozenTrial]:
    """COMPLETE trials best first by the first objective, then the rest by number."""
    sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    rest = [t for t in trials if t not in complete]
    return sorted(complete, key=lambda t: (sign * t.values[0], t.number)) + rest


def _copy(
    trial: FrozenTrial, dists: dict[str, optuna.distributions.BaseDistribution], source: str
) -> FrozenTrial:
    return optuna.trial.create_trial(
        state=trial.state,
        params=dict(trial.params),
        distributions={name: dists[name] for name in trial.params},
        values=trial.values if trial.state == TrialState.COMPLETE else None,
        intermediate_values=dict(trial.intermediate_values),
        user_attrs=dict(trial.user_attrs),
        system_attrs={
            optuna_tables.WARM_START_KEY: {"study": source, "trial": trial.number},
            # Constraint values, for samplers and the feasible best.
            **{k: v for k, v in trial.system_attrs.items() if k.startswith("constraints:")},
        },
    )
