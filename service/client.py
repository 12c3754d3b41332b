"""Following a study from outside the service: its summary, read until it leaves running."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["follow_study"]

Summary = dict[str, Any]


def follow_study(
    read: Callable[[], Summary],
    *,
    interval_s: float | Callable[[Summary], float] = 1.0,
    timeout_s: float | None = None,
    on_poll: Callable[[Summary], None] | None = None,
) -> Summary:
    """Read a study's summary (``GET /studies/{name}``) until its status is no longer
    ``running``; the last summary.

    Args:
        read: returns the summary.
        interval_s: seconds between reads, or a function of the last summary giving them.
        timeout_s: give up after this long (None: wait as long as it runs).
        on_poll: called with every summary read (a progress bar, say).

    Raises:
        TimeoutError: it still ran after ``timeout_s``; the message has its counts.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        study = read()
        if on_poll is not None:
            on_poll(study)
        if study["status"] != "running":
            return study
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(
                f"study {study['name']} still runs after {timeout_s} s: {study['counts']}"
            )
        time.sleep(interval_s(study) if callable(interval_s) else interval_s)
