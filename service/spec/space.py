"""Study spec -> Optuna objects: distributions, sampler, pruner; task defaults resolved."""

from __future__ import annotations

import collections.abc
import inspect
import json
import math
import sys
import typing
import warnings
from typing import TYPE_CHECKING, Any

import optuna
import pydantic
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from service.errors import SpecError
from service.spec.conditions import condition_holds, suggestion_order
from service.spec.models import (
    CategoricalParam,
    FloatParam,
    IntParam,
    IntRange,
    NamedArgs,
    Objective,
    Param,
    StudySpec,
    WorkersSpec,
)

if TYPE_CHECKING:
    from service.tasks.task import Task

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "build_pruner",
    "build_sampler",
    "distribution",
    "distributions",
    "outside",
    "param_errors",
    "resolve_spec",
]

# Samplers and pruners that wrap another object cannot be built from JSON.
_NOT_FROM_JSON = {"PartialFixedSampler", "PatientPruner"}


def _classes(module: Any, base: type) -> dict[str, type]:
    return {
        name: cls
        for name in module.__all__
        if isinstance(cls := getattr(module, name), type)
        and issubclass(cls, base)
        and not inspect.isabstract(cls)
        and name not in _NOT_FROM_JSON
    }


SAMPLERS: dict[str, type] = _classes(optuna.samplers, optuna.samplers.BaseSampler)
PRUNERS: dict[str, type] = _classes(optuna.pruners, optuna.pruners.BasePruner)


def _build(kind: str, classes: dict[str, type], spec: NamedArgs, field: str) -> Any:
    cls = classes.get(spec.name)
    if cls is None:
        raise SpecError(
            [
                (
                    f"{field}.name",
                    f"unknown {kind} {spec.name!r}; known: {', '.join(sorted(classes))}",
                )
            ]
        )
    accepted = [
        p.name
        for p in inspect.signature(cls).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = sorted(set(spec.args) - set(accepted))
    if unknown:
        raise SpecError(
            [
                (
                    f"{field}.args",
                    f"unknown argument(s) {unknown} for {spec.name}; accepted: {accepted}",
                )
            ]
        )
    signature = inspect.signature(cls)
    wrong = [
        (f"{field}.args.{name}", f"{spec.name}: {why}")
        for name, value in spec.args.items()
        if (why := _arg_type_error(cls, signature.parameters[name], value)) is not None
    ]
    if wrong:
        raise SpecError(wrong)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(**spec.args)
    except Exception as exc:  # the class's own check of its arguments
        raise SpecError([(f"{field}.args", f"{spec.name}: {exc}")]) from None


def _arg_type_error(cls: type, parameter: inspect.Parameter, value: Any) -> str | None:
    """Why a JSON ``value`` does not fit the parameter's annotation, or None.

    Optuna annotates as strings; those that name only typing's and the class's
    module's names are checked strictly (JSON numbers for numbers, lists for
    sequences); the rest are left to the class.
    """
    hint = parameter.annotation
    if hint is inspect.Parameter.empty:
        return None
    if isinstance(hint, str):
        names = {**vars(collections.abc), **vars(typing), **vars(sys.modules[cls.__module__])}
        try:
            hint = eval(hint, names)  # noqa: S307 (Optuna's own annotation, not user input)
        except Exception:
            return None  # names only imported for type checkers
    try:
        adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(hint)
    except Exception:
        return None  # no schema for that type (a class of Optuna's)
    try:
        adapter.validate_json(json.dumps(value), strict=True)
    except pydantic.ValidationError as exc:
        return (
            f"{parameter.name} must be {_hint_name(hint)}, got {value!r} ({exc.errors()[0]['msg']})"
        )
    return None


def _hint_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _grid_errors(spec: StudySpec) -> list[tuple[str, str]]:
    """A GridSampler's grid must give values for every searched parameter, inside its range."""
    if spec.sampler.name != "GridSampler" or not isinstance(
        grid := spec.sampler.args.get("search_space"), dict
    ):
        return []
    field = "sampler.args.search_space"
    dists = distributions(spec)
    errors = []
    if missing := sorted(set(dists) - set(grid)):
        errors.append((field, f"the grid has no values for {missing}; GridSampler needs each"))
    for name, values in grid.items():
        if name not in dists:
            errors.append(
                (f"{field}.{name}", f"not in the search space; parameters: {sorted(dists)}")
            )
        elif not isinstance(values, list) or not values:
            errors.append((f"{field}.{name}", "must be a non-empty list of values"))
        else:
            errors += [
                (f"{field}.{name}.{i}", why)
                for i, value in enumerate(values)
                if (why := outside(value, dists[name])) is not None
            ]
    return errors


def build_sampler(spec: NamedArgs, *, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of a spec; ``seed_offset`` gives each worker its own seed."""
    if seed_offset and isinstance(spec.args.get("seed"), int):
        spec = NamedArgs(
            name=spec.name, args={**spec.args, "seed": spec.args["seed"] + seed_offset}
        )
    sampler: optuna.samplers.BaseSampler = _build("sampler", SAMPLERS, spec, "sampler")
    return sampler


def build_pruner(spec: NamedArgs | None) -> optuna.pruners.BasePruner:
    """The pruner of a spec (NopPruner when it has none)."""
    if spec is None:
        return optuna.pruners.NopPruner()
    pruner: optuna.pruners.BasePruner = _build("pruner", PRUNERS, spec, "pruner")
    return pruner


def distribution(param: Param) -> BaseDistribution:
    """The Optuna distribution of one validated parameter."""
    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, CategoricalParam):
        return CategoricalDistribution(param.choices)
    return IntDistribution(param.low, param.high, log=param.log, step=param.step)


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """The Optuna distributions of a resolved spec's search space."""
    return {name: distribution(param) for name, param in (spec.search_space or {}).items()}


def _rank_errors(workers: WorkersSpec, task: Task) -> list[tuple[str, str]]:
    """Why a trial cannot train on ``workers.ranks`` ranks."""
    field, ranks, gpus = "workers.ranks_per_trial", workers.ranks, workers.gpus_per_worker
    if ranks == 1:
        return []
    if not task.supports_ddp:
        why = f"task {task.name!r} cannot train on several ranks (it does not support DDP)"
        return [(field, f"{why}; leave ranks_per_trial at 1")]
    if gpus and ranks != gpus:
        return [(field, f"one rank per GPU: {gpus} (or auto) with gpus_per_worker {gpus}")]
    return []


def resolve_spec(spec: StudySpec, task: Task) -> StudySpec:
    """Fill the task's defaults in ``spec`` and check everything that depends on the task.

    Raises:
        SpecError: every problem found, each with its field.
    """
    data = spec.model_dump()
    if data["objectives"] is None:
        data["objectives"] = [dict(o) for o in task.default_objectives]
    if data["search_space"] is None:
        data["search_space"] = {k: dict(v) for k, v in task.default_search_space.items()}
    multi = len(data["objectives"]) > 1
    if data["pruner"] is None and not multi:
        # Of the pruners bench/pruning.py compares, the one that trains the fewest epochs
        # for the same best value on digits and synthetic (docs/benchmarks.md).
        data["pruner"] = {"name": "SuccessiveHalvingPruner", "args": {}}
    data["task_args"] = {**task.default_task_args, **data["task_args"]}
    conditional = any(p.get("when") for p in data["search_space"].values())
    if conditional and "sampler" not in spec.model_fields_set:
        # TPE models a conditional space in groups of parameters searched together.
        data["sampler"] = {"name": "TPESampler", "args": {"multivariate": True, "group": True}}
    resolved = StudySpec.model_validate(data)

    errors: list[tuple[str, str]] = []
    known_params = sorted(task.default_params)
    for name, param in (resolved.search_space or {}).items():
        if name not in task.default_params:
            why = f"task {task.name!r} has no parameter {name!r}; parameters: {known_params}"
            errors.append((f"search_space.{name}", why))
        else:
            errors.extend(_param_type_errors(task, name, param))
    objectives: list[Objective] = resolved.objectives or []
    for i, objective in enumerate(objectives):
        if objective.metric not in task.metrics:
            errors.append(
                (
                    f"objectives.{i}.metric",
                    f"task {task.name!r} produces {list(task.metrics)}, not {objective.metric!r}",
                )
            )
    constrained: dict[str, int] = {}
    for i, constraint in enumerate(resolved.constraints):
        if (first := constrained.setdefault(constraint.metric, i)) != i:
            why = (
                f"{constraint.metric!r} is bounded by constraints.{first} already; give both "
                "bounds there (min and max)"
            )
            errors.append((f"constraints.{i}.metric", why))
        elif constraint.metric not in task.metrics:
            errors.append(
                (
                    f"constraints.{i}.metric",
                    f"task {task.name!r} produces {list(task.metrics)}, not {constraint.metric!r}",
                )
            )
    if multi and spec.pruner is not None and spec.pruner.name != "NopPruner":
        errors.append(("pruner", "a multi-objective study cannot prune; leave the pruner out"))
    for key, value in spec.task_args.items():
        if (problem := task.task_arg_error(key, value)) is not None:
            errors.append((f"task_args.{key}", problem))
    errors.extend(_grid_errors(resolved))
    errors.extend(_rank_errors(resolved.workers, task))
    for build in (lambda: build_sampler(resolved.sampler), lambda: build_pruner(resolved.pruner)):
        try:
            build()
        except SpecError as exc:
            errors.extend(exc.errors)
    condition_errors = _condition_errors(resolved.search_space or {})
    errors.extend(condition_errors)
    errors.extend(
        enqueue_errors(
            resolved,
            resolved.enqueue_trials,
            "enqueue_trials",
            conditions_valid=not condition_errors,
        )
    )
    if errors:
        raise SpecError(errors)
    return resolved


def _condition_errors(space: dict[str, Param]) -> list[tuple[str, str]]:
    """Conditions on parameters that are not there, on floats, on values a parent cannot
    take, on themselves, or in a cycle."""
    errors = []
    for name, param in space.items():
        for parent, condition in (param.when or {}).items():
            field = f"search_space.{name}.when.{parent}"
            source = space.get(parent)
            if parent == name:
                errors.append((field, "a parameter cannot depend on itself"))
            elif source is None:
                errors.append((field, f"no parameter {parent!r}; parameters: {sorted(space)}"))
            elif isinstance(source, FloatParam):
                errors.append(
                    (field, f"{parent} is a float: conditions read categorical or int parameters")
                )
            elif isinstance(condition, IntRange):
                errors.extend(_range_condition_errors(field, parent, source, condition))
            elif not condition:  # never true: the parameter would never be searched
                errors.append((field, f"list the values of {parent} it is searched for"))
            else:
                dist = distribution(source)
                errors += [
                    (f"{field}.{i}", f"{parent} never takes it: {why}")
                    for i, value in enumerate(condition)
                    if (why := outside(value, dist)) is not None
                ]
    if not errors:
        try:
            suggestion_order({name: {"when": p.when or {}} for name, p in space.items()})
        except ValueError as exc:
            errors.append(("search_space", str(exc)))
    return errors


def _range_condition_errors(
    field: str, parent: str, source: Param, condition: IntRange
) -> list[tuple[str, str]]:
    if not isinstance(source, IntParam):
        return [(field, f"{parent} is categorical: list the values, min and max are for ints")]
    low = source.low if condition.min is None else max(source.low, condition.min)
    high = source.high if condition.max is None else min(source.high, condition.max)
    if low > high:
        return [(field, f"no value of {parent} ({source.low} to {source.high}) is in that range")]
    return []


def enqueue_errors(
    spec: StudySpec, trials: list[dict[str, Any]], field: str, *, conditions_valid: bool = True
) -> list[tuple[str, str]]:
    """What is wrong with parameter sets to run next (a spec's ``enqueue_trials``, or
    ``POST /studies/{name}/trials``): unknown names, values outside their ranges, and
    conditional parameters their values do not activate or leave out."""
    errors = param_errors(trials, distributions(spec), field)
    if conditions_valid:
        errors.extend(_activity_errors(spec, trials, field))
    return errors


def _activity_errors(
    spec: StudySpec, trials: list[dict[str, Any]], prefix: str
) -> list[tuple[str, str]]:
    """Enqueued trials must give exactly the conditional parameters their values activate."""
    space = {name: p.model_dump() for name, p in (spec.search_space or {}).items()}
    order = suggestion_order(space)
    errors = []
    for i, trial in enumerate(trials):
        values: dict[str, Any] = {}
        for name in order:
            when: dict[str, Any] = space[name].get("when") or {}
            field = f"{prefix}.{i}.{name}"
            unknown = [parent for parent in when if parent not in trial]
            if when and unknown:
                if name in trial:
                    errors.append((field, f"its condition reads {unknown}: give them too"))
                continue
            active = condition_holds(when, values)
            if name in trial and not active:
                errors.append((field, f"not searched when {_described(when)} does not hold"))
            elif name not in trial and active and when:
                errors.append((field, f"searched when {_described(when)}: give it a value"))
            elif name in trial:
                values[name] = trial[name]
    return errors


def _described(when: dict[str, Any]) -> str:
    return " and ".join(f"{parent} in {condition}" for parent, condition in when.items())


_TYPE_NAMES = {float: "a number", int: "an integer", str: "a string", bool: "a boolean"}


def _fits(value: Any, kind: type) -> bool:
    if kind is object:
        return True
    if isinstance(value, bool) or kind is bool:
        return isinstance(value, bool) and kind is bool
    if kind is float:
        return isinstance(value, int | float)
    return isinstance(value, kind)


def _param_type_errors(task: Task, name: str, param: Param) -> list[tuple[str, str]]:
    """Values of ``param`` that parameter ``name`` of ``task`` cannot take."""
    kind = task.param_type(name)
    takes = f"task {task.name!r} takes {name} as {_TYPE_NAMES.get(kind, kind.__name__)}"
    field = f"search_space.{name}"
    if isinstance(param, CategoricalParam):
        return [
            (f"{field}.choices.{i}", f"{takes}; {choice!r} is not one")
            for i, choice in enumerate(param.choices)
            if not _fits(choice, kind)
        ]
    if kind is object or kind is float or (kind is int and isinstance(param, IntParam)):
        return []
    if kind is int:
        return [(f"{field}.type", f"{takes}; a float range gives fractions: use type int")]
    return [(f"{field}.type", f"{takes}; use type categorical with choices of that type")]


def param_errors(
    trials: list[dict[str, Any]], dists: dict[str, BaseDistribution], field: str
) -> list[tuple[str, str]]:
    """What is wrong with parameter sets to enqueue: unknown names, values outside."""
    errors = []
    for i, params in enumerate(trials):
        for name, value in params.items():
            if name not in dists:
                reason = f"not in the search space; parameters: {sorted(dists)}"
                errors.append((f"{field}.{i}.{name}", reason))
            elif (why := outside(value, dists[name])) is not None:
                errors.append((f"{field}.{i}.{name}", why))
    return errors


def outside(value: Any, dist: BaseDistribution) -> str | None:
    """Why ``value`` is not in ``dist``, or None when it is."""
    if isinstance(dist, CategoricalDistribution):
        if not any(type(value) is type(c) and value == c for c in dist.choices):
            return f"{value!r} is not one of the choices {list(dist.choices)}"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {value!r}"
    if isinstance(dist, IntDistribution) and not isinstance(value, int):
        return f"must be an integer, got {value!r}"
    if not isinstance(dist, FloatDistribution | IntDistribution):
        raise TypeError(f"unexpected distribution {dist!r}")
    if not (dist.low <= value <= dist.high):
        return f"{value} is outside [{dist.low}, {dist.high}]"
    if dist.step is not None:
        steps = (value - dist.low) / dist.step
        if not math.isclose(steps, round(steps), abs_tol=1e-8):
            return f"{value} is not on the grid low + k * step (step {dist.step})"
    return None
