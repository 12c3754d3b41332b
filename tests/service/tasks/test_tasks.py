"""The task registry: built-ins, entry-point tasks, and the digits task's quality."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helios import Trainer
from service.tasks.registry import UnknownTaskError, all_tasks, get_task
from tests.support import fake_distribution

REPO = Path(__file__).resolve().parents[3]


def test_builtin_tasks_are_registered() -> None:
    tasks = all_tasks()
    assert {"digits", "synthetic"} <= set(tasks)
    assert tasks["digits"].metrics == ("accuracy", "loss")


def test_unknown_task_lists_the_registered_ones() -> None:
    with pytest.raises(UnknownTaskError) as info:
        get_task("imagenet")
    assert str(info.value).startswith("unknown task 'imagenet'; registered tasks: digits")


def test_digits_reaches_95_percent_on_cpu() -> None:
    task = get_task("digits")
    run = task.build(dict(task.default_params), dict(task.default_task_args))
    Trainer(**run.trainer_args, seed=0, device="cpu").fit(run.model, run.datamodule)
    assert run.model.metrics["accuracy"] >= 0.95


def test_synthetic_task_reports_its_metrics() -> None:
    task = get_task("synthetic")
    run = task.build({"x": 2.0, "y": 3}, dict(task.default_task_args))
    state = Trainer(**run.trainer_args, seed=0, device="cpu").fit(run.model, run.datamodule)
    assert state.validation_cycles == 10
    assert run.model.metrics["loss"] == pytest.approx(1 / 10)
    assert run.model.metrics["score"] == pytest.approx(-1 / 10)


def test_entry_point_tasks_are_loaded_and_a_broken_one_is_skipped(tmp_path: Path) -> None:
    fake_distribution(
        tmp_path,
        "teamtasks",
        """
        from service.tasks import Task, TaskRun

        def build(params, task_args):
            raise NotImplementedError

        ECHO = Task(
            name="echo",
            description="a team's task",
            metrics=("score",),
            default_objectives=({"metric": "score", "direction": "maximize"},),
            default_search_space={"a": {"type": "float", "low": 0.0, "high": 1.0}},
            default_task_args={},
            default_params={"a": 0.5},
            build=build,
        )
        """,
        "[helios_hpo.tasks]\necho = teamtasks:ECHO\nbroken = teamtasks:MISSING\n",
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    code = "from service.tasks import all_tasks; print(sorted(all_tasks()))"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "['digits', 'echo', 'synthetic']"
    assert "could not load task entry point broken = teamtasks:MISSING" in proc.stderr
