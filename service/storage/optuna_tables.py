"""Optuna's tables as SQLAlchemy sees them, and the marks this service keeps in them."""

from __future__ import annotations

from sqlalchemy import (
    Column,
    DateTime,
    Enum,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["BUDGET_STATES", "FINISHED_STATES", "STOPPED_KEY", "TRIAL_STATES", "WARM_START_KEY"]

# Optuna's tables, declared here for reading only (Optuna creates and migrates them).
# Its enums are native types on PostgreSQL; the names must match Optuna's.
_optuna = MetaData()


STATE_TYPE = Enum("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING", name="trialstate")


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
    Column("state", STATE_TYPE),
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
