"""Study routes."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query, Response, status
from fastapi import Path as FastApiPath
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import (
    DatabaseDep,
    LaunchersDep,
    ModelsDep,
    SettingsDep,
    StorageDep,
    StudyName,
)
from service.artifacts.store import ARTIFACT_ID_PATTERN, ModelStore, digest_header
from service.errors import NotFoundError
from service.read_models import (
    ArtifactRead,
    BestRead,
    ErrorBody,
    Page,
    StudyRead,
    StudySummary,
    TrialRead,
)
from service.spec.models import EnqueueRequest, StudyPatch, StudySpec
from service.studies import operations, reads

router = APIRouter(prefix="/studies", tags=["studies"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such study"},
    409: {"model": ErrorBody, "description": "Conflicts with the study's state"},
    422: {"model": ErrorBody, "description": "Invalid input: which field, and why"},
}
Limit = Annotated[int, Query(ge=1, le=1000)]
# Bounded: the databases' integers are 64-bit.
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]
TrialState = Literal["RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL"]
TrialNumber = Annotated[int, FastApiPath(ge=0, le=2**31 - 1)]
ArtifactId = Annotated[str, FastApiPath(pattern=ARTIFACT_ID_PATTERN, max_length=36)]
_FILE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/octet-stream": {}}, "description": "The file"}
}
_CHUNK = 1 << 20
RangeHeader = Annotated[
    str | None,
    Header(alias="Range", description="bytes=FIRST-LAST of one range: that part (206)"),
]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=StudyRead, responses=_ERRORS)
async def create_study(
    spec: StudySpec, db: DatabaseDep, storage: StorageDep, launchers: LaunchersDep
) -> StudyRead:
    """Create a study and start its workers."""
    return await db.run(operations.create_study, spec, storage, launchers=launchers)


@router.get("", response_model=Page[StudySummary], responses=_ERRORS)
async def list_studies(
    db: DatabaseDep, limit: Limit = 50, offset: Offset = 0
) -> Page[StudySummary]:
    """List studies, newest first."""
    return await db.run(reads.list_studies, limit=limit, offset=offset)


@router.get("/{name}", response_model=StudyRead, responses=_ERRORS)
async def read_study(
    name: StudyName, db: DatabaseDep, settings: SettingsDep, models: ModelsDep
) -> StudyRead:
    """A study's spec, status, trial counts, best value, workers and bytes on disk."""
    return await db.run(reads.summary, name, settings.data_dir, models)


@router.get("/{name}/trials", response_model=Page[TrialRead], responses=_ERRORS)
async def read_trials(
    name: StudyName,
    db: DatabaseDep,
    state: TrialState | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[TrialRead]:
    """A page of the study's trials by number, optionally of one state."""
    return await db.run(reads.read_trials, name, state=state, limit=limit, offset=offset)


@router.get("/{name}/best", response_model=BestRead, responses=_ERRORS)
async def read_best(name: StudyName, db: DatabaseDep) -> BestRead:
    """The best trial, or the Pareto front of a multi-objective study."""
    return await db.run(reads.read_best, name)


@router.post("/{name}/stop", response_model=StudyRead, responses=_ERRORS)
async def stop_study(name: StudyName, db: DatabaseDep) -> StudyRead:
    """Stop a study now; in-flight trials end FAIL."""
    return await db.run(operations.stop_study, name)


@router.post("/{name}/pause", response_model=StudyRead, responses=_ERRORS)
async def pause_study(name: StudyName, db: DatabaseDep) -> StudyRead:
    """Pause: workers finish their current trial and exit."""
    return await db.run(operations.pause_study, name)


@router.post("/{name}/resume", response_model=StudyRead, responses=_ERRORS)
async def resume_study(name: StudyName, db: DatabaseDep) -> StudyRead:
    """Resume a paused, stopped or failed study."""
    return await db.run(operations.resume_study, name)


@router.patch("/{name}", response_model=StudyRead, responses=_ERRORS)
async def update_study(name: StudyName, patch: StudyPatch, db: DatabaseDep) -> StudyRead:
    """Change n_trials, timeout_s or workers.count of a study, live."""
    return await db.run(operations.update_study, name, patch)


@router.post(
    "/{name}/trials",
    status_code=status.HTTP_201_CREATED,
    response_model=StudyRead,
    responses=_ERRORS,
)
async def enqueue_trials(name: StudyName, request: EnqueueRequest, db: DatabaseDep) -> StudyRead:
    """Queue parameter sets to run next."""
    return await db.run(operations.enqueue_trials, name, request)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
async def delete_study(
    name: StudyName, db: DatabaseDep, storage: StorageDep, settings: SettingsDep, models: ModelsDep
) -> Response:
    """Delete a study that is not running, with its Optuna study, logs, checkpoints and
    stored models."""
    await db.run(operations.delete_study, name, storage, settings.data_dir, models)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{name}/trials/{number}/artifacts",
    response_model=list[ArtifactRead],
    responses=_ERRORS,
)
async def read_artifacts(
    name: StudyName, number: TrialNumber, db: DatabaseDep, models: ModelsDep
) -> list[ArtifactRead]:
    """The files a trial stored (its trained model), each with whether it is still kept."""
    return await db.run(reads.read_artifacts, name, number, models)


@router.get(
    "/{name}/trials/{number}/artifacts/{artifact_id}",
    response_class=StreamingResponse,
    responses={**_ERRORS, **_FILE},
)
async def download_artifact(
    name: StudyName,
    number: TrialNumber,
    artifact_id: ArtifactId,
    db: DatabaseDep,
    models: ModelsDep,
    range_header: RangeHeader = None,
) -> StreamingResponse:
    """Download a trial's artifact (streamed, with its length and SHA-256 in Repr-Digest;
    ``Range: bytes=N-`` goes on from byte N)."""
    artifact = await db.run(reads.read_artifact, name, number, artifact_id, models)
    return await _file_response(number, artifact, models, range_header)


@router.get("/{name}/best/model", response_class=StreamingResponse, responses={**_ERRORS, **_FILE})
async def download_best_model(
    name: StudyName,
    db: DatabaseDep,
    models: ModelsDep,
    trial: Annotated[
        int | None,
        Query(
            ge=0, le=2**31 - 1, description="with several objectives: a trial of the Pareto front"
        ),
    ] = None,
    range_header: RangeHeader = None,
) -> StreamingResponse:
    """Download the best trial's model; ``X-Trial-Number`` says which trial it is
    (``Range: bytes=N-`` goes on from byte N)."""
    number, artifact = await db.run(reads.read_best_model, name, trial, models)
    return await _file_response(number, artifact, models, range_header)


async def _file_response(
    number: int, artifact: ArtifactRead, models: ModelStore, range_header: str | None
) -> StreamingResponse:
    """The artifact, opened before the response starts: retention removing it later
    leaves this download whole. A ``Range: bytes=...`` of one range gets that part (206),
    so that a cut download can go on where it stopped."""
    try:
        file, size = await run_in_threadpool(models.open, artifact.id)
    except FileNotFoundError:
        raise NotFoundError(f"artifact {artifact.id} of trial {number} was deleted") from None
    filename = re.sub(r"[^A-Za-z0-9._-]", "_", artifact.filename) or "artifact"
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Trial-Number": str(number),
    }
    if artifact.sha256:  # of the whole file, also when a part is sent
        headers["Repr-Digest"] = digest_header(artifact.sha256)
    if artifact.stored_by:  # a warm-start copy: its original stored the model
        headers["X-Stored-By"] = artifact.stored_by
    wanted = byte_range(range_header, size)
    if wanted == "unsatisfiable":
        file.close()
        return StreamingResponse(
            iter(()),
            status_code=status.HTTP_416_RANGE_NOT_SATISFIABLE,
            headers={**headers, "Content-Range": f"bytes */{size}", "Content-Length": "0"},
        )
    start, end = wanted or (0, size - 1)
    if wanted is not None:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end + 1 - start)
    return StreamingResponse(
        _chunks(file, start, end + 1 - start),
        status_code=status.HTTP_206_PARTIAL_CONTENT if wanted else status.HTTP_200_OK,
        media_type=artifact.mimetype,
        headers=headers,
    )


def byte_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """The first and last byte a ``Range`` header asks of ``size`` bytes; None for the whole
    file (no header, one that is not a single byte range: RFC 9110 lets it be ignored)."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes
        if int(last) == 0:
            return "unsatisfiable"
        return max(size - int(last), 0), size - 1
    if int(first) >= size:
        return "unsatisfiable"
    end = size - 1 if last == "" else min(int(last), size - 1)
    return (int(first), end) if end >= int(first) else None


def _chunks(file: Any, start: int, length: int) -> Iterator[bytes]:
    try:
        _skip(file, start)
        while length > 0 and (chunk := file.read(min(_CHUNK, length))):
            length -= len(chunk)
            yield chunk
    finally:
        file.close()


def _skip(file: Any, count: int) -> None:
    """Move ``count`` bytes on: a seek where the reader can (a file), else a read (a
    bucket's stream)."""
    if count == 0:
        return
    try:
        file.seek(count)
    except (AttributeError, OSError, io.UnsupportedOperation):
        while count > 0 and (chunk := file.read(min(_CHUNK, count))):
            count -= len(chunk)
