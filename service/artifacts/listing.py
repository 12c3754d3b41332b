"""A study's artifacts as the API lists and serves them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from service.errors import InvalidRequestError, NotFoundError
from service.read_models import ArtifactRead
from service.spec.models import ArtifactsSpec, StudySpec
from service.storage import optuna_queries, optuna_trials
from service.storage import optuna_tables as ot
from service.storage.rows import StudyRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

from service.artifacts.store import ARTIFACT_KEY, SHA256_KEY, ModelStore, is_artifact_id

__all__ = ["best_model", "list_artifacts", "study_artifact_ids", "trial_artifact"]

_DASHBOARD_KEY = "dashboard:artifacts:"  # optuna-dashboard's older key of a trial's upload


# A copy of a copy of ... is followed this far to the model its original stored.
MAX_COPY_HOPS = 8


def study_artifact_ids(session: Session, name: str) -> list[str]:
    """The ids of every artifact of Optuna study ``name`` (to delete with it): its trials'
    models and files uploaded through optuna-dashboard, to a trial or to the study."""
    optuna_id = optuna_queries.optuna_study_id(session, name)
    if optuna_id is None:
        return []
    attrs = ot.optuna_trial_system_attributes
    of_trials = session.execute(
        select(attrs.c.key)
        .join(ot.optuna_trials, attrs.c.trial_id == ot.optuna_trials.c.trial_id)
        .where(
            ot.optuna_trials.c.study_id == optuna_id,
            attrs.c.key.like(f"{ARTIFACT_KEY}%"),
        )
    )
    study_attrs = ot.optuna_study_system_attributes
    of_study = session.execute(
        select(study_attrs.c.key).where(
            study_attrs.c.study_id == optuna_id,
            study_attrs.c.key.like(f"{ARTIFACT_KEY}%")
            | study_attrs.c.key.like(f"{_DASHBOARD_KEY}%"),
        )
    )
    ids = [key.rpartition(":")[2] for (key,) in [*of_trials, *of_study]]
    return [i for i in ids if is_artifact_id(i)]


def missing_artifact_reason(
    session: Session, trial_id: int | None, artifact_id: str, store: ModelStore
) -> str | None:
    """Why artifact ``artifact_id`` (of Optuna's trial ``trial_id``, when known) cannot
    be served, as the API says it; None when the store has it."""
    if store.size(artifact_id) is not None:
        return None
    if trial_id is not None:
        study = session.scalar(
            select(ot.optuna_studies.c.study_name)
            .join(
                ot.optuna_trials,
                ot.optuna_trials.c.study_id == ot.optuna_studies.c.study_id,
            )
            .where(ot.optuna_trials.c.trial_id == trial_id)
        )
        keep = _kept_by(session, study)
        for found in _artifacts(session, trial_id, keep, store):
            if found.id == artifact_id and found.reason:
                return f"artifact {artifact_id} {found.reason}"
    return f"artifact {artifact_id} was deleted"


def list_artifacts(
    session: Session, optuna_id: int, number: int, keep: ArtifactsSpec, store: ModelStore
) -> list[ArtifactRead]:
    """The artifacts trial ``number`` stored, each with whether it is still kept."""
    trial_id, _ = _trial(session, optuna_id, number)
    return _artifacts(session, trial_id, keep, store)


def trial_artifact(
    session: Session,
    optuna_id: int,
    number: int,
    artifact_id: str | None,
    keep: ArtifactsSpec,
    store: ModelStore,
    *,
    hops: int = 0,
) -> ArtifactRead:
    """One artifact of trial ``number`` (its model when ``artifact_id`` is None); a
    warm-start copy's is its original's (``hops``: copies followed so far).

    Raises:
        NotFoundError: with why: no such trial, it did not complete, the study keeps no
            models, no such artifact, or retention deleted it (404).
    """
    trial_id, state = _trial(session, optuna_id, number)
    if state != "COMPLETE":
        detail = f"trial {number} is {state}; only COMPLETE trials store their model"
        if state in ("RUNNING", "WAITING"):
            detail = f"trial {number} is {state}; its model is stored when it completes"
        raise NotFoundError(detail)
    found = _artifacts(session, trial_id, keep, store)
    if not found and hops < MAX_COPY_HOPS and (origin := _copied_from(session, trial_id)):
        return _original_artifact(session, number, origin, artifact_id, store, hops + 1)
    if not found:
        if keep.keep == "none":
            raise NotFoundError(f"the study keeps no models (artifacts.keep: none); trial {number}")
        raise NotFoundError(f"trial {number} stored no model")
    if artifact_id is None:
        wanted: ArtifactRead | None = found[-1]  # the latest, should a trial have several
    else:
        wanted = next((a for a in found if a.id == artifact_id), None)
    if wanted is None:
        raise NotFoundError(f"trial {number} has no artifact {artifact_id}")
    if not wanted.available:
        raise NotFoundError(f"artifact {wanted.id} of trial {number} {wanted.reason}")
    return wanted


def _kept_by(session: Session, study: str | None) -> ArtifactsSpec:
    """What the service's study named ``study`` keeps (the defaults for another tool's)."""
    stored = session.scalar(select(StudyRow.spec).where(StudyRow.name == study))
    return StudySpec.from_stored(stored).artifacts if stored is not None else ArtifactsSpec()


def _copied_from(session: Session, trial_id: int) -> tuple[str, int] | None:
    """The study and trial number a warm-start copy was copied from (None: no copy)."""
    attrs = ot.optuna_trial_system_attributes
    value = session.scalar(
        select(attrs.c.value_json).where(
            attrs.c.trial_id == trial_id, attrs.c.key == ot.WARM_START_KEY
        )
    )
    if value is None:
        return None
    origin = json.loads(value)
    return str(origin["study"]), int(origin["trial"])


def _original_artifact(
    session: Session,
    number: int,
    origin: tuple[str, int],
    artifact_id: str | None,
    store: ModelStore,
    hops: int,
) -> ArtifactRead:
    """A warm-start copy's model: the one the trial it was copied from stored."""
    study, original = origin
    copy = f"trial {number} is a warm-start copy of trial {original} of study {study!r}"
    optuna_id = optuna_queries.optuna_study_id(session, study)
    if optuna_id is None:
        raise NotFoundError(f"{copy}, which was deleted with its models")
    keep = _kept_by(session, study)
    try:
        found = trial_artifact(session, optuna_id, original, artifact_id, keep, store, hops=hops)
    except NotFoundError as exc:
        raise NotFoundError(f"{copy}: {exc.detail}") from None
    return found.model_copy(update={"stored_by": f"{study}/{original}"})


def best_model(
    session: Session,
    optuna_id: int,
    directions: list[str],
    trial: int | None,
    keep: ArtifactsSpec,
    store: ModelStore,
) -> tuple[int, ArtifactRead]:
    """The model of the best trial (with several objectives: of ``trial``, which must be
    on the Pareto front), and its trial number.

    Raises:
        NotFoundError: no trial completed, ``trial`` is not on the front, or its model
            is not kept (404).
        InvalidRequestError: several objectives and no ``trial`` (422).
    """
    from service.studies.trial_stats import trial_stats

    if len(directions) > 1:
        front = sorted(t.number for t in optuna_trials.pareto_front(session, optuna_id, directions))
        if not front:
            raise NotFoundError("no trial has completed yet")
        if trial is None:
            why = "a study with several objectives has no single best model; pick one of"
            raise InvalidRequestError([("trial", f"{why} its Pareto front: {_numbers(front)}")])
        if trial not in front:
            raise NotFoundError(f"trial {trial} is not on the Pareto front ({_numbers(front)})")
        number = trial
    else:
        best = trial_stats(session.connection(), optuna_id, directions[0]).best
        if best is None:
            raise NotFoundError("no trial has completed yet")
        number = best.number
        if trial is not None and trial != number:
            raise NotFoundError(f"trial {trial} is not the best trial ({number})")
    return number, trial_artifact(session, optuna_id, number, None, keep, store)


def _trial(session: Session, optuna_id: int, number: int) -> tuple[int, str]:
    row = session.execute(
        select(ot.optuna_trials.c.trial_id, ot.optuna_trials.c.state).where(
            ot.optuna_trials.c.study_id == optuna_id,
            ot.optuna_trials.c.number == number,
        )
    ).first()
    if row is None:
        raise NotFoundError(f"the study has no trial {number}")
    return row.trial_id, str(row.state)


def _artifacts(
    session: Session, trial_id: int, keep: ArtifactsSpec, store: ModelStore
) -> list[ArtifactRead]:
    attrs = ot.optuna_trial_system_attributes
    rows = session.execute(
        select(attrs.c.key, attrs.c.value_json)
        .where(
            attrs.c.trial_id == trial_id,
            attrs.c.key.like(f"{ARTIFACT_KEY}%") | attrs.c.key.like(f"{SHA256_KEY}%"),
        )
        .order_by(attrs.c.trial_system_attribute_id)
    ).all()
    sums = {
        key.removeprefix(SHA256_KEY): json.loads(value)
        for key, value in rows
        if key.startswith(SHA256_KEY)
    }
    found = []
    for key, value in rows:
        if not key.startswith(ARTIFACT_KEY):
            continue
        meta = _meta(value)
        if meta is None:
            continue
        artifact_id = str(meta["artifact_id"])
        size = store.size(artifact_id)
        reason = None
        if size is None:
            reason = (
                f"was deleted by retention: the study keeps the best {keep.keep_best_k} "
                "trials' models (artifacts.keep_best_k)"
                if keep.keep == "best_k"
                else "was deleted: the service's checkpoint budget "
                "(HELIOS_HPO_CHECKPOINT_BUDGET_BYTES) removes the worst models first"
            )
        found.append(
            ArtifactRead(
                id=artifact_id,
                filename=str(meta.get("filename", "")),
                mimetype=str(meta.get("mimetype", "application/octet-stream")),
                size_bytes=size,
                sha256=sums.get(artifact_id),
                available=size is not None,
                reason=reason,
            )
        )
    return found


def _meta(value_json: str) -> dict[str, Any] | None:
    """Optuna's artifact meta: a JSON text stored as a JSON string (None: not one)."""
    try:
        meta = json.loads(value_json)
        meta = json.loads(meta) if isinstance(meta, str) else meta
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and "artifact_id" in meta else None


def _numbers(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers))
