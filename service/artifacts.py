"""Trained models kept as Optuna artifacts of their trials, and which of them are kept.

A COMPLETE trial's model (its networks' state, parameters, task arguments and metrics)
goes to the artifact store under the data directory as an Optuna artifact of the trial,
so optuna-dashboard lists it too; its SHA-256 is a trial system attribute beside
Optuna's own. With ``artifacts.keep: best_k`` only the best K trials keep theirs: each
completion removes the files of the trials that fell out of the best K.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Hashable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from service import optuna_tables as ot
from service.errors import InvalidRequestError, NotFoundError
from service.models import StudyRow
from service.schemas import ArtifactRead, ArtifactsSpec, DiskUsage, StudySpec

if TYPE_CHECKING:
    import optuna
    from sqlalchemy.orm import Session

    from service.settings import Settings

__all__ = [
    "ARTIFACT_ID_PATTERN",
    "MODEL_FORMAT",
    "artifact_dir",
    "best_model",
    "digest_header",
    "disk_usage",
    "enforce_budget",
    "list_artifacts",
    "prune_models",
    "save_model",
    "study_artifact_ids",
    "ModelStore",
    "trial_artifact",
]

log = logging.getLogger(__name__)

MODEL_FORMAT = "helios-hpo-model/1"
ARTIFACT_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_OPTUNA_KEY = "artifacts:"  # Optuna's system attribute of each artifact
_SHA256_KEY = "helios_hpo:sha256:"  # ours, beside it
_DASHBOARD_KEY = "dashboard:artifacts:"  # optuna-dashboard's older key of a trial's upload
# A copy of a copy of ... is followed this far to the model its original stored.
MAX_COPY_HOPS = 8
_CHUNK = 1 << 20


def artifact_dir(data_dir: Path) -> Path:
    """The artifact store's folder: one file per artifact, named by its id."""
    return data_dir / "artifacts"


class ModelStore:
    """Where stored models' bytes live: a folder under the data directory (the default),
    or an S3 bucket (``HELIOS_HPO_ARTIFACT_STORE=s3://BUCKET``). ``optuna`` is the same
    place as Optuna's artifact store, for uploads and for optuna-dashboard."""

    def __init__(self, folder: Path | None = None, bucket: str | None = None, client: Any = None):
        from optuna.artifacts import Boto3ArtifactStore, FileSystemArtifactStore

        self.folder, self.bucket, self._client = folder, bucket, client
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self.optuna: Any = FileSystemArtifactStore(folder)
        else:
            self.optuna = Boto3ArtifactStore(bucket or "", client=client)

    @classmethod
    def of(cls, settings: Settings) -> ModelStore:
        """The store the settings name (``artifact_store``, else the data directory)."""
        if settings.artifact_store is None:
            return cls(folder=artifact_dir(settings.data_dir))
        try:
            import boto3
        except ImportError:
            raise SystemExit(
                "HELIOS_HPO_ARTIFACT_STORE names an S3 bucket: pip install 'helios-hpo[s3]'"
            ) from None
        client = boto3.client("s3", endpoint_url=settings.artifact_s3_endpoint_url)
        return cls(bucket=settings.artifact_store.removeprefix("s3://"), client=client)

    def size(self, artifact_id: str) -> int | None:
        """The artifact's bytes; None once removed (or for an id that is not the store's)."""
        if not _is_id(artifact_id):
            return None
        if self.folder is not None:
            return _size(self.folder / artifact_id)
        try:
            return int(
                self._client.head_object(Bucket=self.bucket, Key=artifact_id)["ContentLength"]
            )
        except self._client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def open(self, artifact_id: str) -> tuple[Any, int]:
        """A reader of the artifact and its length; removing it later does not cut the read.

        Raises:
            FileNotFoundError: it is not there.
        """
        if not _is_id(artifact_id):
            raise FileNotFoundError(artifact_id)
        if self.folder is not None:
            file = (self.folder / artifact_id).open("rb")
            return file, os.fstat(file.fileno()).st_size
        try:
            found = self._client.get_object(Bucket=self.bucket, Key=artifact_id)
        except self._client.exceptions.NoSuchKey:
            raise FileNotFoundError(artifact_id) from None
        return found["Body"], int(found["ContentLength"])

    def remove(self, artifact_id: str) -> bool:
        """Remove the artifact; whether it was there."""
        if not _is_id(artifact_id):  # an id another tool wrote names nothing of ours
            return False
        if self.folder is not None:
            path = self.folder / artifact_id
            existed = path.exists()
            path.unlink(missing_ok=True)  # a download in flight keeps its open file
            return existed
        existed = self.size(artifact_id) is not None
        self._client.delete_object(Bucket=self.bucket, Key=artifact_id)
        return existed

    def local_sizes(self) -> dict[str, int]:
        """Id -> bytes of every artifact in the folder (none for a bucket: not on disk)."""
        if self.folder is None:
            return {}
        return {
            path.name: size
            for path in self.folder.glob("*")
            if _is_id(path.name) and (size := _size(path)) is not None
        }


def save_model(
    trial: optuna.Trial, modules: Mapping[str, Any], about: Mapping[str, Any], store: ModelStore
) -> str:
    """Store the trial's model as an artifact of the (still running) trial; its id.

    Args:
        modules: each network's ``state_dict`` by the model's attribute name.
        about: ``task``, ``params``, ``task_args``, ``values`` and ``metrics``.
    """
    import torch
    from optuna.artifacts import upload_artifact

    with tempfile.TemporaryDirectory(prefix="helios-hpo-model-") as work:
        path = Path(work) / f"trial-{trial.number}-model.pt"
        torch.save({"format": MODEL_FORMAT, **about, "modules": dict(modules)}, path)
        digest = _sha256(path)
        artifact_id = upload_artifact(
            artifact_store=store.optuna,
            file_path=str(path),
            study_or_trial=trial,
            mimetype="application/octet-stream",
        )
    trial.storage.set_trial_system_attr(trial._trial_id, _SHA256_KEY + artifact_id, digest)
    return artifact_id


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_header(sha256_hex: str) -> str:
    """The ``Repr-Digest`` value (RFC 9530) of a SHA-256 given in hex."""
    return f"sha-256=:{base64.b64encode(bytes.fromhex(sha256_hex)).decode()}:"


# Retention


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
        front = {t.number for t in ot.pareto_front(session, optuna_id, directions)}
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
            attrs.c.key.like(f"{_OPTUNA_KEY}%"),
        )
    )
    stored: dict[int, list[str]] = {}
    for number, key in rows:
        artifact_id = key.removeprefix(_OPTUNA_KEY)
        if _is_id(artifact_id):  # an id another tool wrote names no file of the store
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
            ot.infeasible_clause().label("infeasible"),
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
        select(ot.optuna_trials.c.study_id, ot.optuna_trials.c.number, attrs.c.key)
        .join(attrs, attrs.c.trial_id == ot.optuna_trials.c.trial_id)
        .where(ot.optuna_trials.c.state == "COMPLETE", attrs.c.key.like(f"{_OPTUNA_KEY}%"))
    ).all()
    by_study: dict[int, dict[int, list[str]]] = {}
    for study_id, number, key in rows:
        artifact_id = key.removeprefix(_OPTUNA_KEY)
        if artifact_id in models:
            by_study.setdefault(study_id, {}).setdefault(number, []).append(artifact_id)
    candidates: list[tuple[int, int, str]] = []  # (rank, study, artifact id), worst last
    for study_id, stored in by_study.items():
        directions = ot.study_directions(session, study_id)
        if len(directions) > 1:
            front = {t.number for t in ot.pareto_front(session, study_id, directions)}
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
        _size(Path(folder, name)) or 0 for folder, _, names in os.walk(root) for name in names
    )


def study_artifact_ids(session: Session, name: str) -> list[str]:
    """The ids of every artifact of Optuna study ``name`` (to delete with it): its trials'
    models and files uploaded through optuna-dashboard, to a trial or to the study."""
    optuna_id = ot.optuna_study_id(session, name)
    if optuna_id is None:
        return []
    attrs = ot.optuna_trial_system_attributes
    of_trials = session.execute(
        select(attrs.c.key)
        .join(ot.optuna_trials, attrs.c.trial_id == ot.optuna_trials.c.trial_id)
        .where(ot.optuna_trials.c.study_id == optuna_id, attrs.c.key.like(f"{_OPTUNA_KEY}%"))
    )
    study_attrs = ot.optuna_study_system_attributes
    of_study = session.execute(
        select(study_attrs.c.key).where(
            study_attrs.c.study_id == optuna_id,
            study_attrs.c.key.like(f"{_OPTUNA_KEY}%")
            | study_attrs.c.key.like(f"{_DASHBOARD_KEY}%"),
        )
    )
    ids = [key.rpartition(":")[2] for (key,) in [*of_trials, *of_study]]
    return [i for i in ids if _is_id(i)]


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
            .join(ot.optuna_trials, ot.optuna_trials.c.study_id == ot.optuna_studies.c.study_id)
            .where(ot.optuna_trials.c.trial_id == trial_id)
        )
        keep = _kept_by(session, study)
        for found in _artifacts(session, trial_id, keep, store):
            if found.id == artifact_id and found.reason:
                return f"artifact {artifact_id} {found.reason}"
    return f"artifact {artifact_id} was deleted"


# Reading


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
    optuna_id = ot.optuna_study_id(session, study)
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
    from service.trial_stats import trial_stats

    if len(directions) > 1:
        front = sorted(t.number for t in ot.pareto_front(session, optuna_id, directions))
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
            ot.optuna_trials.c.study_id == optuna_id, ot.optuna_trials.c.number == number
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
            attrs.c.key.like(f"{_OPTUNA_KEY}%") | attrs.c.key.like(f"{_SHA256_KEY}%"),
        )
        .order_by(attrs.c.trial_system_attribute_id)
    ).all()
    sums = {
        key.removeprefix(_SHA256_KEY): json.loads(value)
        for key, value in rows
        if key.startswith(_SHA256_KEY)
    }
    found = []
    for key, value in rows:
        if not key.startswith(_OPTUNA_KEY):
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


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # removed by retention
        return None


def _meta(value_json: str) -> dict[str, Any] | None:
    """Optuna's artifact meta: a JSON text stored as a JSON string (None: not one)."""
    try:
        meta = json.loads(value_json)
        meta = json.loads(meta) if isinstance(meta, str) else meta
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and "artifact_id" in meta else None


def _is_id(artifact_id: str) -> bool:
    return re.fullmatch(ARTIFACT_ID_PATTERN, artifact_id) is not None


def _numbers(numbers: list[int]) -> str:
    return ", ".join(map(str, numbers))
