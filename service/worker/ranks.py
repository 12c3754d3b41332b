"""A trial trained on several ranks: rank 0 runs the worker loop, the other ranks follow it."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
from typing import Any

import optuna
from sqlalchemy import Engine, event

from service.settings import Settings
from service.spec.models import StudySpec
from service.worker.log_lines import current_trial
from service.worker.signals import WorkerStopped
from service.worker.training import Training

log = logging.getLogger(__name__)


class RanksFailed(Exception):
    """A rank of a several-rank worker failed: every rank exits, and the worker with them."""


class Ranks:
    """Rank 0's side of a several-rank worker: it alone talks to the database and sends
    the others the study's spec once, then each trial's (number, origin), then None."""

    def __init__(self, stored_spec: dict[str, Any]) -> None:
        self.several = world_size() > 1
        self.send(stored_spec)

    def send(self, message: object) -> None:
        if self.several:
            from helios import distributed

            distributed.broadcast_object(message)


def world_size() -> int:
    """How many ranks this worker runs as (its parent sets WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_ranks(settings: Settings) -> None:
    """Join the ranks' process group on this rank's device, every collective bounded by
    ``ddp_timeout_s``; count this process's database statements from here on."""
    import torch

    from helios import distributed

    event.listen(Engine, "before_cursor_execute", _count_statement)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    distributed.init_process_group(device, dt.timedelta(seconds=settings.ddp_timeout_s))


_statements = 0


def _count_statement(*args: object) -> None:
    global _statements  # noqa: PLW0603 (one counter per process)
    _statements += 1


def log_statements(rank: int | None) -> None:
    if rank is not None:
        log.info("rank %d made %d database statements", rank, _statements)


def follow(study_name: str, settings: Settings) -> int:
    """A rank other than 0: train what rank 0 sends, never touching the database."""
    from helios import distributed

    def receive() -> Any:
        return distributed.broadcast_object(None)

    code = 0
    try:
        training = Training(study_name, StudySpec.from_stored(receive()), settings)
        while (message := receive()) is not None:
            number, origin = message
            token = current_trial.set(number)
            try:
                training.train(None, origin)
            except optuna.TrialPruned:
                pass
            except Exception:
                log.exception("trial failed on this rank; every rank exits")
                code = 1
                break
            finally:
                current_trial.reset(token)
    except WorkerStopped:
        log.info("stopped by SIGTERM")
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log_statements(int(os.environ["RANK"]))
    return code
