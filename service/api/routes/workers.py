"""Worker routes: a study's workers and their logs, also as a live stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import StreamingResponse

from service import studies
from service.api.deps import DatabaseDep
from service.db import session_scope
from service.models import WorkerState
from service.schemas import ErrorBody, LogRead, WorkerRead
from service.supervisor import log_tail

router = APIRouter(tags=["workers"])

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Not found"}}
_POLL_S = 0.25


@router.get("/studies/{name}/workers", response_model=list[WorkerRead], responses=_ERRORS)
async def list_workers(name: str, db: DatabaseDep) -> list[WorkerRead]:
    """A study's workers: launcher, host, pid, GPUs, state and exit code."""
    return await db.run(studies.list_workers, name)


def _of_trial(lines: list[str], trial: int | None) -> list[str]:
    if trial is None:
        return lines
    tag = f" trial={trial} "
    return [line for line in lines if tag in line]


@router.get(
    "/workers/{worker_id}/logs",
    response_model=LogRead,
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def worker_logs(
    worker_id: Annotated[int, FastApiPath(ge=1, le=2**31 - 1)],
    request: Request,
    db: DatabaseDep,
    tail: Annotated[int, Query(ge=1, le=10_000)] = 100,
    trial: Annotated[int | None, Query(ge=0, description="only this trial's lines")] = None,
    follow: Annotated[bool, Query(description="stream new lines as server-sent events")] = False,
) -> Any:
    """The last ``tail`` lines of a worker's log; ``follow=true`` streams new lines."""
    worker = await db.run(studies.get_worker, worker_id)
    path = Path(worker.log_path)
    sessions = request.app.state.sessions
    # A running container's log comes from the Docker API; an ended one's was kept in a file.
    docker = request.app.state.docker if worker.launcher == "docker" else None
    if docker is not None and worker.state == WorkerState.RUNNING:
        if not follow:
            lines = await asyncio.to_thread(docker.logs, worker_id)
            if not lines:
                lines = await asyncio.to_thread(log_tail, path, 1_000_000)
            return LogRead(
                worker=worker_id, state=worker.state, lines=_of_trial(lines, trial)[-tail:]
            )
        stream = _follow_container(docker, path, worker_id, sessions, trial, tail)
    elif not follow:
        lines = await asyncio.to_thread(log_tail, path, tail if trial is None else 1_000_000)
        return LogRead(worker=worker_id, state=worker.state, lines=_of_trial(lines, trial)[-tail:])
    else:
        stream = _follow(path, worker_id, sessions, trial, tail)
    return StreamingResponse(
        stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )


async def _follow_container(
    docker: Any, path: Path, worker_id: int, sessions: Any, trial: int | None, tail: int
) -> AsyncIterator[str]:
    """Like ``_follow``, reading the container's log through the Docker API."""
    sent: int | None = None
    while True:
        ended = await asyncio.to_thread(_worker_ended, sessions, worker_id)
        lines = await asyncio.to_thread(docker.logs, worker_id)
        if lines is None:  # removed once ended; its log was kept in the file
            lines = log_tail(path, 1_000_000)
        new = lines[sent:] if sent is not None else _of_trial(lines, trial)[-tail:]
        for line in new if sent is None else _of_trial(new, trial):
            yield f"data: {line}\n\n"
        sent = len(lines)
        if ended:
            yield "event: end\ndata: worker ended\n\n"
            return
        await asyncio.sleep(_POLL_S)


async def _follow(
    path: Path, worker_id: int, sessions: Any, trial: int | None, tail: int
) -> AsyncIterator[str]:
    """Send the last lines, then each new line, until the worker has ended and all is sent."""
    for line in _of_trial(log_tail(path, tail if trial is None else 1_000_000), trial)[-tail:]:
        yield f"data: {line}\n\n"
    position = path.stat().st_size if path.exists() else 0
    pending = ""
    while True:
        ended = await asyncio.to_thread(_worker_ended, sessions, worker_id)
        if path.exists():
            with path.open(errors="replace") as f:
                f.seek(position)
                chunk = f.read()
                position = f.tell()
            *complete, pending = (pending + chunk).split("\n")
            for line in _of_trial(complete, trial):
                yield f"data: {line}\n\n"
        if ended:
            yield "event: end\ndata: worker ended\n\n"
            return
        await asyncio.sleep(_POLL_S)


def _worker_ended(sessions: Any, worker_id: int) -> bool:
    with session_scope(sessions) as session:
        worker = studies.get_worker(session, worker_id)
        return bool(worker.state != WorkerState.RUNNING)
