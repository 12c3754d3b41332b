"""The lifecycle rules on plain values: no database, no processes, no clock."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from service.spec.models import StudySpec
from service.studies import lifecycle
from tests.specs import synthetic

T0 = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@dataclasses.dataclass
class Worker:
    id: int
    state: str
    trials_trained: int = 0
    started_at: dt.datetime = T0
    ended_at: dt.datetime | None = None


def _spec(**fields: Any) -> StudySpec:
    return StudySpec.model_validate(synthetic("s", **fields))


def _counts(complete: int = 0, pruned: int = 0, fail: int = 0) -> dict[str, int]:
    return {"COMPLETE": complete, "PRUNED": pruned, "FAIL": fail, "RUNNING": 0, "WAITING": 0}


@pytest.mark.parametrize(
    ("crashes", "delay"), [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (50, 60.0)]
)
def test_restart_delay_doubles_up_to_a_minute(crashes: int, delay: float) -> None:
    assert lifecycle.restart_delay(crashes) == delay


def test_the_crash_streak_counts_crashes_at_start_newest_first() -> None:
    workers = [
        Worker(1, "failed"),
        Worker(2, "exited", trials_trained=3),  # did work: breaks the streak
        Worker(3, "failed"),
        Worker(4, "failed", trials_trained=1),  # killed while training: breaks it too
        Worker(5, "failed"),
        Worker(6, "failed"),
        Worker(7, "running"),  # still running: not part of it
    ]
    assert [w.id for w in lifecycle.crash_streak(workers, None)] == [6, 5]
    assert lifecycle.crash_streak([Worker(1, "stopped"), Worker(2, "lost")], None) == []


def test_a_resume_starts_a_new_streak() -> None:
    workers = [Worker(1, "failed", started_at=_at(0)), Worker(2, "failed", started_at=_at(10))]
    assert [w.id for w in lifecycle.crash_streak(workers, None)] == [2, 1]
    assert [w.id for w in lifecycle.crash_streak(workers, _at(5))] == [2]
    assert lifecycle.crash_streak(workers, _at(20)) == []


def test_restart_wait_is_what_is_left_of_the_delay() -> None:
    streak = [Worker(3, "failed", ended_at=_at(100)), Worker(2, "failed", ended_at=_at(90))]
    assert lifecycle.restart_wait(streak, _at(100.5)) == pytest.approx(1.5)  # 2 s after 2
    assert lifecycle.restart_wait(streak, _at(103)) == 0.0
    assert lifecycle.restart_wait([], _at(0)) == 0.0


def test_the_verdict_in_its_order() -> None:
    spec = _spec(n_trials=10, max_failed_trials=2, timeout_s=60, max_restarts=1)

    def judge(counts: dict[str, int], failures: int = 0, crashes: int = 0, at: float = 0) -> str:
        found = lifecycle.verdict(
            spec, counts, unretried_failures=failures, crashes=crashes, created_at=T0, now=_at(at)
        )
        return "running" if found is None else f"{found.status}: {found.reason}"

    assert judge(_counts(complete=4)) == "running"
    assert judge(_counts(complete=7, pruned=3)) == "finished: 10 of 10 trials finished"
    # The budget wins over everything else that happened at the same time.
    assert judge(_counts(complete=10), failures=5, crashes=5, at=100).startswith("finished: 10")
    assert judge(_counts(), failures=2) == "running"  # at the limit, not past it
    assert judge(_counts(), failures=3) == (
        "failed: 3 trials failed without a retry left (max_failed_trials=2); see the worker logs"
    )
    assert judge(_counts(), at=59.9) == "running"
    assert judge(_counts(), at=60) == "finished: timeout of 60.0 s reached"
    assert judge(_counts(), crashes=1) == "running"
    assert judge(_counts(), crashes=2) == (
        "failed: 2 workers in a row failed before training a trial (max_restarts=1)"
    )


def test_no_failure_limit_and_no_timeout() -> None:
    spec = _spec(n_trials=5, max_failed_trials=None)
    found = lifecycle.verdict(
        spec, _counts(fail=1000), unretried_failures=1000, crashes=0, created_at=T0, now=_at(1e9)
    )
    assert found is None


def test_room_needs_budget_and_time() -> None:
    spec = _spec(n_trials=3, timeout_s=10)
    assert lifecycle.has_room(spec, _counts(complete=2), T0, _at(5))
    assert not lifecycle.has_room(spec, _counts(complete=2, pruned=1), T0, _at(5))
    assert not lifecycle.has_room(spec, _counts(), T0, _at(10))


def _to_start(spec: StudySpec, **facts: Any) -> int:
    args: dict[str, Any] = {
        "live": 0,
        "budget_used": 0,
        "first_trial_started": True,
        "start_one_first": False,
        "streak": [],
        "now": T0,
    }
    return lifecycle.workers_to_start(spec, **{**args, **facts})


def test_workers_to_start_fill_the_count_within_the_budget() -> None:
    spec = _spec(n_trials=10, workers=4)
    assert _to_start(spec) == 4
    assert _to_start(spec, live=3) == 1
    assert _to_start(spec, live=4) == 0
    assert _to_start(spec, live=5) == 0  # count lowered: the newest retire themselves
    assert _to_start(spec, budget_used=10) == 0  # the running workers end the last trials


def test_one_worker_first_until_a_trial_runs_where_workers_share_a_host() -> None:
    spec = _spec(workers=4)
    assert _to_start(spec, first_trial_started=False, start_one_first=True) == 1
    assert _to_start(spec, live=1, first_trial_started=False, start_one_first=True) == 0
    assert _to_start(spec, live=1, first_trial_started=True, start_one_first=True) == 3
    assert _to_start(spec, first_trial_started=False, start_one_first=False) == 4


def test_no_worker_starts_while_the_study_backs_off_after_crashes() -> None:
    spec = _spec(workers=1)
    streak = [Worker(2, "failed", ended_at=_at(10)), Worker(1, "failed", ended_at=_at(8))]
    assert _to_start(spec, streak=streak, now=_at(11)) == 0  # 2 s after 2 crashes
    assert _to_start(spec, streak=streak, now=_at(12)) == 1


def _stop(spec: StudySpec, **facts: Any) -> str | None:
    args: dict[str, Any] = {
        "status": "running",
        "budget_used": 0,
        "older_workers": 0,
        "created_at": T0,
        "now": T0,
    }
    return lifecycle.stop_reason(spec, **{**args, **facts})


def test_why_a_worker_takes_no_more_trials() -> None:
    spec = _spec(n_trials=5, timeout_s=60, workers=2)
    assert _stop(spec) is None
    assert _stop(spec, budget_used=5) == "budget of 5 trials spent"
    # The budget is told first: a spent study may be marked finished already.
    assert _stop(spec, budget_used=5, status="finished") == "budget of 5 trials spent"
    assert _stop(spec, status="paused") == "study is paused"
    assert _stop(spec, older_workers=1) is None
    assert _stop(spec, older_workers=2) == ("workers.count is 2 and older workers run; retiring")
    assert _stop(spec, now=_at(60)) == "study timeout of 60.0 s reached"


def test_the_failure_limit_alone() -> None:
    spec = _spec(max_failed_trials=1)
    assert lifecycle.failure_verdict(spec, 1) is None
    found = lifecycle.failure_verdict(spec, 2)
    assert found is not None
    assert (found.status, found.cause) == ("failed", "failures")


def test_an_unreachable_host_fails_a_study_only_once_the_outage_lasts() -> None:
    spec = StudySpec.model_validate(synthetic("s", max_restarts=1))
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    counts = {"COMPLETE": 0, "PRUNED": 0}

    def verdict(unreachable_for: float | None) -> lifecycle.Verdict | None:
        return lifecycle.verdict(
            spec, counts, unretried_failures=0, crashes=5, created_at=now, now=now,
            unreachable_for=unreachable_for, outage_s=30,
        )  # fmt: skip

    assert verdict(10) is None
    late = verdict(31)
    assert late is not None
    assert (late.status, late.cause) == ("failed", "crashes")
    assert "unreachable" in late.reason
    crashed = verdict(None)  # not an outage: crashes
    assert crashed is not None
    assert "5 workers in a row failed" in crashed.reason
