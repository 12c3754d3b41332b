"""What is kept: each study's best models, and the service's checkpoint budget."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from service.read_models import DiskUsage
from service.spec.models import ArtifactsSpec
from service.storage import optuna_queries, optuna_trials
from service.storage import optuna_tables as ot

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

from service.artifacts.listing import study_artifact_ids
from service.artifacts.store import ARTIFACT_KEY, ModelStore, file_size, is_artifact_id

__all__ = ["disk_usage", "enforce_budget", "prune_models"]

log = logging.getLogger(__name__)


def prune_models(
    session: Session, optuna_id: int, directions: list[str], keep: ArtifactsSpec, store: ModelStore
) -> list[int]:
    """Remove the model files of the COMPLETE trials outside the best ``keep_best_k``
    (feasible first, then by value; with several objectives: those off the Pareto
    front); the numbers of the trials whose files it removed."""
    if keep.keep != "best_k":
        return []
    stored = _stored_models(session, optuna_id)
    if not stored:
        return []
    if len(directions) > 1:
        front = {t.number for t in optuna_trials.pareto_front(session, optuna_id, directions)}
        drop = [number for number in stored if number not in front]
    else:
        ranked = _ranked(session, optuna_id, directions[0], list(stored))
        drop = ranked[keep.keep_best_k :]
    removed = []
    for number in drop:
        for artifact_id in stored[number]:
            if store.remove(artifact_id):
                removed.append(number)
    if removed:
        log.info("removed the models of trials %s (not in the best %d)", removed, keep.keep_best_k)
    return removed


def _stored_models(session: Session, optuna_id: int) -> dict[int, list[str]]:
    """COMPLETE trial number -> ids of its artifacts."""
    attrs = ot.optuna_trial_system_attributes
    rows = session.execute(
        select(ot.optuna_trials.c.number, attrs.c.key)
        .join(attrs, attrs.c.trial_id == ot.optuna_trials.c.trial_id)
        .where(
            ot.optuna_trials.c.study_id == optuna_id,
            ot.optuna_trials.c.state == "COMPLETE",
            attrs.c.key.like(f"{ARTIFACT_KEY}%"),
        )
    )
    stored: dict[int, list[str]] = {}
    for number, key in rows:
        artifact_id = key.removeprefix(ARTIFACT_KEY)
        if is_artifact_id(artifact_id):  # an id another tool wrote names no file of the store
            stored.setdefault(number, []).append(artifact_id)
    return stored


def _ranked(session: Session, optuna_id: int, direction: str, numbers: list[int]) -> list[int]:
    """``numbers`` best first: feasible before infeasible, then by value (infinite and
    missing values last), then by number."""
    trials, values = ot.optuna_trials, ot.optuna_trial_values
    rows = session.execute(
        select(
            trials.c.number,
            values.c.value,
            values.c.value_type,
            optuna_queries.infeasible_clause().label("infeasible"),
        )
        .outerjoin(values, (values.c.trial_id == trials.c.trial_id) & (values.c.objective == 0))
        .where(trials.c.study_id == optuna_id, trials.c.number.in_(numbers))
    ).all()
    sign = 1.0 if direction == "minimize" else -1.0

    def key(row: Any) -> tuple[bool, float, int]:
        finite = row.value is not None and row.value_type == "FINITE"
        return (bool(row.infeasible), sign * row.value if finite else float("inf"), row.number)

    return [row.number for row in sorted(rows, key=key)]


def enforce_budget(session: Session, data_dir: Path, budget_bytes: int, store: ModelStore) -> int:
    """Keep the data directory's checkpoints and models within ``budget_bytes``: remove
    stored models, the worst ranked of every study first, until it fits. Each study's
    best model (with several objectives, its Pareto front) and the working checkpoints
    of running and failed trials are never removed; the bytes still used."""
    models = store.local_sizes()  # models in a bucket take no disk here
    used = sum(models.values()) + tree_bytes(data_dir / "studies")
    if used <= budget_bytes:
        return used
    attrs = ot.optuna_trial_system_attributes
    rows = session.execute(
        select(
            ot.optuna_trials.c.study_id,
            ot.optuna_trials.c.number,
            attrs.c.key,
        )
        .join(attrs, attrs.c.trial_id == ot.optuna_trials.c.trial_id)
        .where(ot.optuna_trials.c.state == "COMPLETE", attrs.c.key.like(f"{ARTIFACT_KEY}%"))
    ).all()
    by_study: dict[int, dict[int, list[str]]] = {}
    for study_id, number, key in rows:
        artifact_id = key.removeprefix(ARTIFACT_KEY)
        if artifact_id in models:
            by_study.setdefault(study_id, {}).setdefault(number, []).append(artifact_id)
    candidates: list[tuple[int, int, str]] = []  # (rank, study, artifact id), worst last
    for study_id, stored in by_study.items():
        directions = optuna_queries.study_directions(session, study_id)
        if len(directions) > 1:
            front = {t.number for t in optuna_trials.pareto_front(session, study_id, directions)}
            ranked = [[n for n in stored if n in front], [n for n in stored if n not in front]]
            order = [(rank, n) for rank, group in enumerate(ranked) for n in group]
        else:
            order = list(enumerate(_ranked(session, study_id, directions[0], list(stored))))
        candidates += [(rank, study_id, a) for rank, n in order if rank > 0 for a in stored[n]]
    for _, _, artifact_id in sorted(candidates, reverse=True):
        if used <= budget_bytes:
            break
        store.remove(artifact_id)
        used -= models[artifact_id]
    if used > budget_bytes:
        log.warning(
            "checkpoints and models use %d bytes, over HELIOS_HPO_CHECKPOINT_BUDGET_BYTES "
            "(%d): what is left is each study's best model and the checkpoints of running "
            "and failed trials; delete finished studies or raise the budget",
            used,
            budget_bytes,
        )
    return used


# A study's bytes on disk, counted again at most this often while its trials are unchanged.
DISK_USAGE_MAX_AGE_S = 10.0


_USAGES_KEPT = 1024


_usages: dict[tuple[str, str, str], tuple[Hashable, float, DiskUsage]] = {}


_usages_lock = threading.Lock()


def disk_usage(
    session: Session, name: str, data_dir: Path, store: ModelStore, version: Hashable = None
) -> DiskUsage:
    """The bytes study ``name`` holds on disk: its working checkpoints and its kept models
    (None for models in a bucket).

    Counting walks the study's checkpoints and looks up each stored model; given a
    ``version`` of the study's trials (it changes when one starts or ends), a count of
    the same version made in the last ``DISK_USAGE_MAX_AGE_S`` seconds is reused.
    """
    key = (str(data_dir), str(store.folder or store.bucket), name)
    now = time.monotonic()
    with _usages_lock:
        kept = _usages.get(key)
    if version is not None and kept is not None:
        kept_version, at, usage = kept
        if kept_version == version and now - at < DISK_USAGE_MAX_AGE_S:
            return usage
    usage = DiskUsage(
        checkpoints_bytes=tree_bytes(data_dir / "studies" / name / "trials"),
        artifacts_bytes=None
        if store.folder is None
        else sum(store.size(i) or 0 for i in study_artifact_ids(session, name)),
    )
    with _usages_lock:
        _usages.pop(key, None)
        _usages[key] = (version, now, usage)
        while len(_usages) > _USAGES_KEPT:
            del _usages[next(iter(_usages))]
    return usage


def tree_bytes(root: Path) -> int:
    """The bytes of the files under ``root``; workers may remove folders meanwhile."""
    return sum(
        file_size(Path(folder, name)) or 0 for folder, _, names in os.walk(root) for name in names
    )
