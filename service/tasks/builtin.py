"""The built-in tasks: digits and synthetic."""

from __future__ import annotations

import logging
from typing import Any

from service.tasks.task import Task, TaskRun

__all__ = ["DIGITS", "SYNTHETIC"]

log = logging.getLogger(__name__)


def _build_digits(params: dict[str, Any], task_args: dict[str, Any]) -> TaskRun:
    from service.tasks.training import DigitsData, DigitsModel

    model = DigitsModel(
        lr=float(params["lr"]),
        hidden=int(params["hidden"]),
        dropout=float(params["dropout"]),
        optimizer=str(params["optimizer"]),
        momentum=float(params["momentum"]),
        betas=(float(params["beta1"]), float(params["beta2"])),
    )
    data = DigitsData(
        batch_size=int(params["batch_size"]), valid_fraction=task_args["valid_fraction"]
    )
    return TaskRun(model, data, {"total_steps": task_args["epochs"], "valid_frequency": 1})


DIGITS = Task(
    name="digits",
    description="An MLP on scikit-learn's bundled 8x8 digits images (1,797 samples).",
    metrics=("accuracy", "loss"),
    default_objectives=({"metric": "accuracy", "direction": "maximize"},),
    default_search_space={
        "lr": {"type": "float", "low": 1e-4, "high": 0.3, "log": True},
        "hidden": {"type": "int", "low": 16, "high": 256, "step": 16},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
        "batch_size": {"type": "categorical", "choices": [16, 32, 64, 128]},
        # Searched only for the optimizer that uses them.
        "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["sgd"]}},
        "beta1": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optimizer": ["adam"]}},
        "beta2": {
            "type": "float",
            "low": 0.99,
            "high": 0.9999,
            "when": {"optimizer": ["adam"]},
        },
    },
    default_task_args={"epochs": 10, "valid_fraction": 0.2},
    task_arg_ranges={"epochs": (1, 100_000), "valid_fraction": (0.05, 0.95)},
    default_params={
        "lr": 0.01,
        "hidden": 128,
        "dropout": 0.1,
        "optimizer": "adam",
        "batch_size": 32,
        "momentum": 0.9,
        "beta1": 0.9,
        "beta2": 0.999,
    },
    build=_build_digits,
    supports_ddp=True,
)


def _build_synthetic(params: dict[str, Any], task_args: dict[str, Any]) -> TaskRun:
    from service.tasks.training import SyntheticData, SyntheticModel

    model = SyntheticModel(
        params,
        sleep_s=task_args["sleep_s"],
        exit_code=task_args["exit_code"],
        fail=task_args["fail"],
        state_bytes=task_args["state_bytes"],
    )
    data = SyntheticData(batches=task_args["batches_per_epoch"])
    # A model without state has nothing to resume: no checkpoints.
    chkpt_frequency = 1 if task_args["state_bytes"] else None
    return TaskRun(
        model,
        data,
        {
            "total_steps": task_args["epochs"],
            "valid_frequency": 1,
            "chkpt_frequency": chkpt_frequency,
        },
    )


SYNTHETIC = Task(
    name="synthetic",
    description="A quadratic bowl that 'trains' in microseconds: for tests and benchmarks.",
    metrics=("loss", "score", "cost"),
    default_objectives=({"metric": "loss", "direction": "minimize"},),
    default_search_space={
        "x": {"type": "float", "low": -10.0, "high": 10.0},
        "y": {"type": "int", "low": -10, "high": 10},
    },
    # exit_code != 0 makes the worker process die in the first batch (crash tests);
    # fail raises an error there (the trial fails, the worker lives).
    default_task_args={
        "epochs": 10,
        "batches_per_epoch": 1,
        "sleep_s": 0.0,
        "exit_code": 0,
        "fail": False,
        "state_bytes": 0,  # a network of this size: checkpoints and stored models
    },
    task_arg_ranges={
        "epochs": (1, 100_000),
        "batches_per_epoch": (1, 100_000),
        "sleep_s": (0.0, 3600.0),
        "exit_code": (0, 255),
        "state_bytes": (0, 1 << 30),
    },
    default_params={"x": 0.0, "y": 0, "kind": "bowl", "z": 0.0},
    build=_build_synthetic,
    supports_ddp=True,  # nothing to synchronise: every rank computes the same metrics
)
