"""A worker's log lines: each names the worker, its rank and the trial it runs."""

from __future__ import annotations

import contextvars
import logging

import optuna

current_trial: contextvars.ContextVar[int | None] = contextvars.ContextVar("trial", default=None)


class _TrialFilter(logging.Filter):
    def __init__(self, worker_id: int) -> None:
        super().__init__()
        self.worker_id = worker_id

    def filter(self, record: logging.LogRecord) -> bool:
        number = current_trial.get()
        record.worker = self.worker_id
        record.trial = "-" if number is None else number
        return True


def configure_logging(worker_id: int, rank: int | None = None) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_TrialFilter(worker_id))
    where = "worker=%(worker)s" if rank is None else f"worker=%(worker)s rank={rank}"
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s {where} trial=%(trial)s %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
