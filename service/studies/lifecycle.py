"""The rules of a study's life, as pure functions over plain values.

The supervisor, the workers and the API ask these; none of them writes a rule
of its own. Nothing here reads the database or the clock: callers pass both in.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from service.spec.models import StudySpec

__all__ = [
    "MAX_RESTART_DELAY_S",
    "Verdict",
    "WorkerFacts",
    "crash_streak",
    "crashed",
    "failure_verdict",
    "finished_trials",
    "has_room",
    "restart_delay",
    "restart_wait",
    "stop_reason",
    "timed_out",
    "verdict",
    "workers_to_start",
]

MAX_RESTART_DELAY_S = 60.0


class WorkerFacts(Protocol):
    """What the rules read of a worker (a ``WorkerRow`` has it)."""

    @property
    def id(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def trials_trained(self) -> int: ...
    @property
    def started_at(self) -> dt.datetime: ...
    @property
    def ended_at(self) -> dt.datetime | None: ...


W = TypeVar("W", bound=WorkerFacts)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """How a running study ends, and why."""

    status: str  # "finished" or "failed"
    reason: str
    cause: str  # "budget", "failures", "timeout" or "crashes"


def finished_trials(counts: Mapping[str, int]) -> int:
    """Trials that spent budget and are done: COMPLETE and PRUNED."""
    return counts.get("COMPLETE", 0) + counts.get("PRUNED", 0)


def timed_out(spec: StudySpec, created_at: dt.datetime, now: dt.datetime) -> bool:
    """Whether the study's ``timeout_s`` has passed since it was created."""
    return spec.timeout_s is not None and (now - created_at).total_seconds() >= spec.timeout_s


def has_room(
    spec: StudySpec, counts: Mapping[str, int], created_at: dt.datetime, now: dt.datetime
) -> bool:
    """Whether a study may run more trials: budget left and time left."""
    return finished_trials(counts) < spec.n_trials and not timed_out(spec, created_at, now)


def crashed(worker: WorkerFacts) -> bool:
    """It failed before it was seen training a trial: a crash at start, not a kill mid-work."""
    return worker.state == "failed" and worker.trials_trained == 0


def crash_streak(workers: Sequence[W], resumed_at: dt.datetime | None) -> list[W]:
    """The newest ended workers, newest first, that crashed at start one after another.

    A worker seen training breaks the streak (a kill mid-training is no crash loop);
    so does a resume: workers started before it do not count.
    """
    streak = []
    for worker in sorted(workers, key=lambda w: w.id, reverse=True):
        if worker.state in ("starting", "pending", "running"):
            continue
        if resumed_at is not None and worker.started_at < resumed_at:
            break
        if not crashed(worker):
            break
        streak.append(worker)
    return streak


def restart_delay(crashes: int) -> float:
    """Seconds between a crash and the next start after ``crashes`` in a row: 1, 2, 4, ... 60."""
    return min(2.0 ** (crashes - 1), MAX_RESTART_DELAY_S) if crashes > 0 else 0.0


def restart_wait(streak: Sequence[WorkerFacts], now: dt.datetime) -> float:
    """Seconds still to wait before starting a worker after ``streak`` (newest first)."""
    if not streak or streak[0].ended_at is None:
        return 0.0
    since = (now - streak[0].ended_at).total_seconds()
    return max(0.0, restart_delay(len(streak)) - since)


def workers_to_start(
    spec: StudySpec,
    *,
    live: int,
    budget_used: int,
    first_trial_started: bool,
    start_one_first: bool,
    streak: Sequence[WorkerFacts],
    now: dt.datetime,
) -> int:
    """How many workers a running study should start now.

    None while its workers are all there, while the running ones hold the last of the
    budget, or while it backs off after crashes; with ``start_one_first``, one until the
    study's first trial starts (workers starting together on one host share its cores).
    """
    missing = spec.workers.count - live
    if missing <= 0 or budget_used >= spec.n_trials or restart_wait(streak, now) > 0:
        return 0
    if start_one_first and not first_trial_started:
        return max(0, min(missing, 1 - live))
    return missing


def stop_reason(
    spec: StudySpec,
    *,
    status: str,
    budget_used: int,
    older_workers: int,
    created_at: dt.datetime,
    now: dt.datetime,
) -> str | None:
    """Why a worker takes no new trial (it exits), or None when it may take one.

    ``older_workers``: live workers of the study started before this one; past
    ``workers.count`` the newest retire.
    """
    # Budget first: the supervisor may already have marked a spent study finished.
    if budget_used >= spec.n_trials:
        return f"budget of {spec.n_trials} trials spent"
    if status != "running":
        return f"study is {status}"
    if older_workers >= spec.workers.count:
        return f"workers.count is {spec.workers.count} and older workers run; retiring"
    if timed_out(spec, created_at, now):
        return f"study timeout of {spec.timeout_s} s reached"
    return None


def failure_verdict(spec: StudySpec, unretried_failures: int) -> Verdict | None:
    """The study fails once more than ``max_failed_trials`` trials failed without a retry."""
    limit = spec.max_failed_trials
    if limit is None or unretried_failures <= limit:
        return None
    return Verdict(
        "failed",
        f"{unretried_failures} trials failed without a retry left "
        f"(max_failed_trials={limit}); see the worker logs",
        "failures",
    )


def verdict(
    spec: StudySpec,
    counts: Mapping[str, int],
    *,
    unretried_failures: int,
    crashes: int,
    created_at: dt.datetime,
    now: dt.datetime,
    unreachable_for: float | None = None,
    outage_s: float = math.inf,
) -> Verdict | None:
    """How a running study ends now, or None while it runs on.

    In this order: its budget is spent, too many trials failed without a retry
    left, its timeout passed, too many workers in a row crashed at start.
    """
    done = finished_trials(counts)
    if done >= spec.n_trials:
        return Verdict("finished", f"{done} of {spec.n_trials} trials finished", "budget")
    if (failed := failure_verdict(spec, unretried_failures)) is not None:
        return failed
    if timed_out(spec, created_at, now):
        return Verdict("finished", f"timeout of {spec.timeout_s} s reached", "timeout")
    if crashes > spec.max_restarts and unreachable_for is not None:
        if unreachable_for < outage_s:
            return None  # an outage of the launcher's host: its workers never ran
        return Verdict(
            "failed",
            f"workers could not be started for {unreachable_for:.0f} s: their host stayed "
            f"unreachable (launcher_outage_s={outage_s:g})",
            "crashes",
        )
    if crashes > spec.max_restarts:
        return Verdict(
            "failed",
            f"{crashes} workers in a row failed before training a trial "
            f"(max_restarts={spec.max_restarts})",
            "crashes",
        )
    return None
