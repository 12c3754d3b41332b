"""The heartbeat thread that keeps a worker's running trial alive in Optuna's table."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

import optuna

from service.worker.log_lines import current_trial

log = logging.getLogger(__name__)


class Heartbeat:
    """One thread for the worker's life: records the running trial's heartbeat every interval.

    A trial's first beat is sent as it is reserved (``Reservations``); this thread sends
    the next ones. Uses Optuna's public storage API.
    """

    def __init__(
        self,
        storage: optuna.storages.RDBStorage,
        interval_s: float,
        training: Callable[[], bool],
        on_training: Callable[[], None],
    ) -> None:
        self._storage, self._interval_s = storage, interval_s
        # Once per trial, at the first beat after it trained a batch: the worker works.
        self._training, self._on_training = training, on_training
        self._trial: tuple[int, int] | None = None  # (trial id, number)
        self._told: int | None = None  # the trial id on_training was called for
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def beating(self, trial_id: int, number: int) -> Iterator[None]:
        """Beat for this trial while the block runs."""
        self._trial = (trial_id, number)
        try:
            yield
        finally:
            self._trial = None

    def close(self) -> None:
        """Stop beating; wait for a beat in progress (which the interpreter's exit would
        cut short while it tears down the modules the beat uses)."""
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            trial = self._trial
            if trial is None:
                continue
            token = current_trial.set(trial[1])  # the log line names the trial
            try:
                self._storage.record_heartbeat(trial[0])
                if self._told != trial[0] and self._training():
                    self._told = trial[0]
                    self._on_training()
            except Exception as exc:  # the database is down, or the trial was deleted
                log.warning("heartbeat failed (%s: %s); retrying", type(exc).__name__, exc)
            finally:
                current_trial.reset(token)
