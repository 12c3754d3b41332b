"""Trials added in bulk read back through Optuna as Optuna's own add_trials writes them."""

from __future__ import annotations

import math
from typing import Literal

import optuna
import pytest
from optuna.distributions import (
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState, create_trial

from service.storage import optuna_writes
from service.storage.db import make_engine, optuna_storage
from service.storage.optuna_writes import add_trials

DISTS = {
    "lr": FloatDistribution(1e-5, 1.0, log=True),
    "hidden": IntDistribution(16, 256, step=16),
    "optimizer": CategoricalDistribution(["adam", "sgd", None]),
    "flag": CategoricalDistribution([True, False]),
}


def _templates(n: int) -> list[FrozenTrial]:
    trials = []
    for i in range(n):
        params = {"lr": 10 ** -(1 + i % 4), "hidden": 16 * (1 + i % 5)}
        params["optimizer"] = ["adam", "sgd", None][i % 3]
        params["flag"] = i % 2 == 0
        state = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.FAIL][i % 4]
        values = [math.inf if i == 4 else i * 0.5, -math.inf if i == 8 else 1.0]
        trials.append(
            create_trial(
                state=state,
                params=params if state != TrialState.WAITING else None,
                distributions=DISTS if state != TrialState.WAITING else None,
                values=values if state == TrialState.COMPLETE else None,
                intermediate_values={0: 1.0, 1: math.nan, 2: -math.inf, 3: i}
                if i % 4 == 1
                else None,
                user_attrs={"i": i, "nested": {"a": [1, "b"]}},
                system_attrs={"fixed_params": {"x": i}, "helios_hpo:warm_start": {"trial": i}},
            )
        )
    return trials


def _comparable(trial: FrozenTrial) -> tuple[object, ...]:
    return (
        trial.number,
        trial.state,
        trial.values,
        trial.params,
        trial.distributions,
        {k: (None if math.isnan(v) else v) for k, v in trial.intermediate_values.items()},
        [math.isnan(v) for v in trial.intermediate_values.values()],
        trial.user_attrs,
        trial.system_attrs,
        trial.datetime_start is None,
        trial.datetime_complete is None,
    )


def test_bulk_trials_read_back_as_optunas_add_trials_writes_them(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(optuna_writes, "CHUNK", 5)  # several chunks of a few trials
    storage = optuna_storage(database_url)
    directions: list[Literal["minimize", "maximize"]] = ["minimize", "maximize"]
    ours = optuna.create_study(storage=storage, study_name="ours", directions=directions)
    theirs = optuna.create_study(storage=storage, study_name="theirs", directions=directions)
    ours.add_trial(_templates(1)[0])  # numbering continues after the trials there
    theirs.add_trial(_templates(1)[0])
    templates = _templates(13)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            add_trials(conn, storage.get_study_id_from_name("ours"), templates)
    finally:
        engine.dispose()
    theirs.add_trials(templates)
    got, want = ours.get_trials(deepcopy=False), theirs.get_trials(deepcopy=False)
    assert [t.number for t in got] == list(range(14))
    assert [_comparable(t) for t in got] == [_comparable(t) for t in want]
    assert ours.best_trials == [got[t.number] for t in theirs.best_trials]
