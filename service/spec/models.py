"""The spec language: a study's spec, its search space, and what may change live."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "CategoricalParam",
    "Constraint",
    "EnqueueRequest",
    "FloatParam",
    "IntParam",
    "NAME_PATTERN",
    "NamedArgs",
    "Objective",
    "Param",
    "StudyPatch",
    "StudySpec",
    "UnreadableSpecError",
    "WarmStart",
    "WorkersPatch",
    "WorkersSpec",
]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


MAX_PARAMS = 256


MAX_CHOICES = 1000


MAX_TRIALS = 1_000_000


class _Strict(BaseModel):
    # Strict types: true is not 1 and "5" is not 5 (an integer is still a float).
    model_config = ConfigDict(extra="forbid", strict=True)


# Optuna stores every parameter value as a float: integers beyond this lose precision.
MAX_INT_BOUND = 2**53


def _fits_steps(low: float, high: float, step: float) -> bool:
    n = (high - low) / step
    return math.isclose(n, round(n), rel_tol=0, abs_tol=1e-8)


def _is_none(value: Any) -> bool:
    return value is None


class IntRange(_Strict):
    """Values of an int parameter from ``min`` to ``max`` (either may be left out)."""

    min: int | None = Field(None, exclude_if=_is_none)
    max: int | None = Field(None, exclude_if=_is_none)

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self


Scalar = bool | int | float | str | None


# Parent parameter -> the values (or the int range) that make a parameter searched.
Condition = Annotated[
    dict[str, list[Scalar] | IntRange],
    Field(
        min_length=1,
        max_length=8,
        description='searched only when each parent has one of the values: {"optimizer": '
        '["sgd"]}, or an int parent is in a range: {"n_layers": {"min": 2}}',
    ),
]


class _SearchedParam(_Strict):
    # Left out of responses when unset: a parameter without a condition reads as before.
    when: Condition | None = Field(None, exclude_if=_is_none)


class FloatParam(_SearchedParam):
    """A float parameter: ``log`` samples on a log scale, ``step`` discretizes."""

    type: Literal["float"]
    low: float = Field(allow_inf_nan=False)
    high: float = Field(allow_inf_nan=False)
    log: bool = False
    step: float | None = Field(None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> FloatParam:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if not math.isfinite(self.high - self.low):
            raise ValueError(
                f"high - low overflows a float ({self.low} to {self.high}); narrow the range"
            )
        if self.step is not None and not (self.high - self.low) / self.step <= MAX_INT_BOUND:
            raise ValueError(
                f"step {self.step} makes more than 2**53 values between low and high; "
                "use a larger step"
            )
        if self.log and self.low <= 0:
            raise ValueError(f"log needs low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined")
        if self.step is not None and not _fits_steps(self.low, self.high, self.step):
            raise ValueError(
                f"step {self.step} does not divide high - low ({self.high - self.low})"
            )
        return self


class IntParam(_SearchedParam):
    """An integer parameter."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntParam:
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        if max(abs(self.low), abs(self.high)) > MAX_INT_BOUND:
            raise ValueError(
                "low and high must lie within -2**53 and 2**53 (Optuna stores values as floats)"
            )
        if self.log and self.low < 1:
            raise ValueError(f"log needs low >= 1, got low={self.low}")
        if self.log and self.step != 1:
            raise ValueError("log and step cannot be combined")
        if (self.high - self.low) % self.step:
            raise ValueError(
                f"step {self.step} does not divide high - low ({self.high - self.low})"
            )
        return self


class CategoricalParam(_SearchedParam):
    """A choice among scalars (null, booleans, numbers, strings)."""

    type: Literal["categorical"]
    choices: list[Any] = Field(min_length=1, max_length=MAX_CHOICES)

    @model_validator(mode="after")
    def _check(self) -> CategoricalParam:
        for i, choice in enumerate(self.choices):
            if choice is not None and not isinstance(choice, bool | int | float | str):
                raise ValueError(
                    f"choices must be null, booleans, numbers or strings; choice {i} is "
                    f"{type(choice).__name__}"
                )
            if isinstance(choice, float) and not math.isfinite(choice):
                raise ValueError("choices must be finite")
        # Optuna finds a choice by ==: 1, 1.0 and true are one value to it (so are 0 and
        # false), and a trial asked for true would train with 1.
        groups: dict[Any, list[int]] = {}
        for i, choice in enumerate(self.choices):
            groups.setdefault(choice, []).append(i)
        same = [indices for indices in groups.values() if len(indices) > 1]
        if same:
            described = "; ".join(
                " and ".join(f"choice {i} ({self.choices[i]!r})" for i in indices)
                for indices in same
            )
            raise ValueError(
                f"choices must be distinct values; equal to Optuna: {described}; keep one of each"
            )
        return self


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


class Objective(_Strict):
    """A metric the task produces and whether to minimize or maximize it."""

    metric: str = Field(min_length=1, max_length=64)
    direction: Literal["minimize", "maximize"]


class Constraint(_Strict):
    """A bound on a metric the task produces, read at the end of training: a trial outside
    it is infeasible (never the best) and samplers steer away from it."""

    metric: str = Field(min_length=1, max_length=64)
    max: float | None = Field(None, allow_inf_nan=False)
    min: float | None = Field(None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _check(self) -> Constraint:
        if self.max is None and self.min is None:
            raise ValueError("give max, min or both")
        if self.max is not None and self.min is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) must be <= max ({self.max})")
        return self

    def violations(self, value: float) -> dict[str, float]:
        """Optuna's constraint values for ``value``: > 0 is violated by that much."""
        bounds = {}
        if self.max is not None:
            bounds[f"{self.metric}.max"] = value - self.max
        if self.min is not None:
            bounds[f"{self.metric}.min"] = self.min - value
        return bounds


class WarmStart(_Strict):
    """Start from an earlier study's finished trials (copied in; no budget spent)."""

    from_study: str = Field(pattern=NAME_PATTERN, max_length=64)
    trials: Literal["complete", "all_finished"] = Field(
        "complete", description="complete: COMPLETE trials; all_finished: COMPLETE and PRUNED"
    )
    limit: int | None = Field(
        None, ge=1, le=100_000, description="copy only the best K (by the first objective)"
    )


class NamedArgs(_Strict):
    """An Optuna sampler or pruner by class name, with its keyword arguments."""

    name: str = Field(min_length=1, max_length=64)
    args: dict[str, Any] = Field(default_factory=dict)


class ArtifactsSpec(_Strict):
    """Which trials keep their trained model as an Optuna artifact."""

    keep: Literal["best_k", "complete", "none"] = Field(
        "best_k",
        description="best_k: every COMPLETE trial stores its model, and only the best "
        "keep_best_k keep it; complete: every COMPLETE trial keeps it; none: no models",
    )
    keep_best_k: int = Field(5, ge=1, le=10_000)


class WorkersSpec(_Strict):
    """How many workers train the study, and where."""

    count: int = Field(1, ge=1, le=64)
    gpus_per_worker: int = Field(0, ge=0, le=16)
    launcher: str = Field(
        "local",
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="a launcher this service runs: local (processes), docker (containers on "
        "HELIOS_HPO_DOCKER_HOSTS), ...",
    )
    image: str | None = Field(
        None,
        max_length=256,
        description="docker: the worker image; the operator's default or one they allow",
    )
    ranks_per_trial: int | Literal["auto"] = Field(
        1,
        description="processes that train each trial together (distributed data parallel, "
        "one process per rank), 1 to 16; auto: one per GPU",
    )

    @field_validator("ranks_per_trial", mode="before")
    @classmethod
    def _ranks(cls, value: object) -> object:
        if value == "auto" or (type(value) is int and 1 <= value <= 16):
            return value
        raise ValueError(f"must be an integer from 1 to 16, or 'auto'; got {value!r}")

    @property
    def ranks(self) -> int:
        """How many ranks train each trial: ``auto`` is one per GPU (one on a CPU)."""
        if self.ranks_per_trial == "auto":
            return max(self.gpus_per_worker, 1)
        return self.ranks_per_trial


class StudySpec(_Strict):
    """What ``POST /studies`` takes. Left-out fields take the task's defaults."""

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    task: str = Field(min_length=1, max_length=64)
    objectives: list[Objective] | None = Field(None, min_length=1, max_length=8)
    search_space: dict[str, Param] | None = Field(None, min_length=1, max_length=MAX_PARAMS)
    sampler: NamedArgs = Field(default_factory=lambda: NamedArgs(name="TPESampler"))
    pruner: NamedArgs | None = None
    n_trials: int = Field(20, ge=1, le=MAX_TRIALS)
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_failed_trials: int | None = Field(5, ge=0)
    max_retries: int = Field(2, ge=0, le=10)
    max_restarts: int = Field(3, ge=0, le=100)
    task_args: dict[str, Any] = Field(default_factory=dict)
    enqueue_trials: list[dict[str, Any]] = Field(default_factory=list, max_length=10_000)
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    constraints: list[Constraint] = Field(default_factory=list, max_length=8)
    warm_start: WarmStart | None = None
    artifacts: ArtifactsSpec = Field(default_factory=ArtifactsSpec)

    @field_validator("objectives")
    @classmethod
    def _distinct_metrics(cls, objectives: list[Objective] | None) -> list[Objective] | None:
        metrics = [o.metric for o in objectives or []]
        if len(set(metrics)) != len(metrics):
            raise ValueError("objectives must name distinct metrics")
        return objectives

    @property
    def is_multi_objective(self) -> bool:
        return self.objectives is not None and len(self.objectives) > 1

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> StudySpec:
        """A spec as the database holds it. Fields this version does not know are ignored
        (a newer service may have written them); what it cannot honour is refused.

        Raises:
            UnreadableSpecError: which fields, and why.
        """
        try:
            return cls.model_validate(stored, extra="ignore")
        except ValidationError as exc:
            raise UnreadableSpecError(
                "; ".join(
                    f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors()
                )
            ) from None


class UnreadableSpecError(ValueError):
    """A stored spec that this version cannot run (one written by a newer service, say)."""


class WorkersPatch(_Strict):
    """The live-changeable part of ``workers``."""

    count: int = Field(ge=1, le=64)


class StudyPatch(_Strict):
    """What ``PATCH /studies/{name}`` may change while a study runs."""

    n_trials: int | None = Field(None, ge=1, le=MAX_TRIALS)
    timeout_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    max_failed_trials: int | None = Field(None, ge=0)
    max_retries: int = Field(2, ge=0, le=10)
    max_restarts: int = Field(3, ge=0, le=100)
    workers: WorkersPatch | None = None


class EnqueueRequest(_Strict):
    """Parameter sets to run next, each validated against the study's search space."""

    trials: list[dict[str, Any]] = Field(min_length=1, max_length=1000)
