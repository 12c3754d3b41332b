"""Where trained models are kept: a folder or an S3 bucket, by artifact id."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

    from service.settings import Settings

__all__ = [
    "ARTIFACT_ID_PATTERN",
    "MODEL_FORMAT",
    "ModelStore",
    "artifact_dir",
    "digest_header",
    "save_model",
]

MODEL_FORMAT = "helios-hpo-model/1"


ARTIFACT_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
ARTIFACT_KEY = "artifacts:"  # Optuna's system attribute of each artifact


SHA256_KEY = "helios_hpo:sha256:"  # ours, beside it


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
        if not is_artifact_id(artifact_id):
            return None
        if self.folder is not None:
            return file_size(self.folder / artifact_id)
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
        if not is_artifact_id(artifact_id):
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
        if not is_artifact_id(artifact_id):  # an id another tool wrote names nothing of ours
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
            if is_artifact_id(path.name) and (size := file_size(path)) is not None
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
    trial.storage.set_trial_system_attr(trial._trial_id, SHA256_KEY + artifact_id, digest)
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


def file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # removed by retention
        return None


def is_artifact_id(artifact_id: str) -> bool:
    return re.fullmatch(ARTIFACT_ID_PATTERN, artifact_id) is not None
