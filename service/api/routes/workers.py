"""Worker routes: a study's workers and their logs, also as a live stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as FastApiPath
from fastapi.responses import StreamingResponse

from service import studies
from service.api.deps import DatabaseDep
from service.db import session_scope
from service.logs import ContainerLines, FileLines, log_tail, of_trial
from service.models import WorkerState
from service.schemas import ErrorBody, LogRead, WorkerRead

router = APIRouter(tags=["workers"])

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Not found"}}
_POLL_S = 0.25


@router.get("/studies/{name}/workers", response_model=list[WorkerRead], responses=_ERRORS)
async def list_workers(name: str, db: DatabaseDep) -> list[WorkerRead]:
    """A study's workers: launcher, host, pid, GPUs, state and exit code."""
    return await db.run(studies.list_workers, name)


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
    # A running container's log comes from the Docker API; an ended one's was kept in a file.
    docker = request.app.state.docker if worker.launcher == "docker" else None
    new_lines: Callable[[bool], list[str]]
    if docker is not None and worker.state == WorkerState.RUNNING:
        new_lines = ContainerLines(docker, worker_id, path)
    elif follow:
        new_lines = FileLines(path)
    else:  # the file's last lines, without holding all of it
        lines = await asyncio.to_thread(log_tail, path, tail if trial is None else 1_000_000)
        return LogRead(worker=worker_id, state=worker.state, lines=of_trial(lines, trial)[-tail:])
    if not follow:  # a running container's log so far
        lines = await asyncio.to_thread(new_lines, False)
        return LogRead(worker=worker_id, state=worker.state, lines=of_trial(lines, trial)[-tail:])
    return StreamingResponse(
        _follow(new_lines, worker_id, request.app.state.sessions, trial, tail),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def _follow(
    new_lines: Callable[[bool], list[str]],
    worker_id: int,
    sessions: Any,
    trial: int | None,
    tail: int,
) -> AsyncIterator[str]:
    """Send the last lines, then each new line, until the worker has ended and all is sent."""
    first = True
    while True:
        ended = await asyncio.to_thread(_worker_ended, sessions, worker_id)
        lines = of_trial(await asyncio.to_thread(new_lines, ended), trial)
        for line in lines[-tail:] if first else lines:
            yield f"data: {line}\n\n"
        first = False
        if ended:
            yield "event: end\ndata: worker ended\n\n"
            return
        await asyncio.sleep(_POLL_S)


def _worker_ended(sessions: Any, worker_id: int) -> bool:
    with session_scope(sessions) as session:
        worker = studies.get_worker(session, worker_id)
        return bool(worker.state != WorkerState.RUNNING)
