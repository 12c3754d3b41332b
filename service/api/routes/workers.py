"""Worker routes: a study's workers and their logs, also as a live stream."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi import Path as FastApiPath
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import Database, DatabaseDep, LaunchersDep, StoppingDep, StudyName
from service.launchers.logs import FileLines, LauncherLines, log_tail, of_trial
from service.read_models import ErrorBody, LogRead, WorkerRead
from service.studies import reads

router = APIRouter(tags=["workers"])

_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": ErrorBody, "description": "Not found"}}
_POLL_S = 0.25


@router.get("/studies/{name}/workers", response_model=list[WorkerRead], responses=_ERRORS)
async def list_workers(name: StudyName, db: DatabaseDep) -> list[WorkerRead]:
    """A study's workers: launcher, host, pid, GPUs, state and exit code."""
    return await db.run(reads.list_workers, name)


@router.get(
    "/workers/{worker_id}/logs",
    response_model=LogRead,
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def worker_logs(
    worker_id: Annotated[int, FastApiPath(ge=1, le=2**31 - 1)],
    db: DatabaseDep,
    launchers: LaunchersDep,
    stopping: StoppingDep,
    tail: Annotated[int, Query(ge=1, le=10_000)] = 100,
    trial: Annotated[int | None, Query(ge=0, description="only this trial's lines")] = None,
    follow: Annotated[bool, Query(description="stream new lines as server-sent events")] = False,
) -> Any:
    """The last ``tail`` lines of a worker's log; ``follow=true`` streams new lines."""
    worker = await db.run(reads.get_worker, worker_id)
    path = Path(worker.log_path)
    # A live container's log comes through its launcher; other logs are files.
    launcher = launchers.get(worker.launcher)
    new_lines: FileLines | LauncherLines
    if launcher is not None and worker.live and worker.ref is not None:
        new_lines = LauncherLines(launcher, worker.ref, path)
    elif follow:
        new_lines = FileLines(path)
    else:  # the file's last lines, without holding all of it
        lines = await run_in_threadpool(log_tail, path, tail, trial)
        return LogRead(worker=worker_id, state=worker.state, lines=lines)
    if not follow:  # a live worker's log so far
        lines = await run_in_threadpool(new_lines.start, tail, trial, False)
        return LogRead(worker=worker_id, state=worker.state, lines=lines)
    return StreamingResponse(
        _follow(new_lines, worker_id, db, stopping, trial, tail),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


async def _follow(
    new_lines: FileLines | LauncherLines,
    worker_id: int,
    db: Database,
    stopping: threading.Event,
    trial: int | None,
    tail: int,
) -> AsyncIterator[str]:
    """Send the last lines, then each new line, until the worker has ended and all is sent,
    or the service stops (``stopping``): then an end event says which.

    File reads and database reads run in the API's thread pool, bounded by
    HELIOS_HPO_API_THREADS like every other request's; each read holds at most
    ``CHUNK_BYTES`` of the log.
    """
    ended = await db.run(reads.worker_ended, worker_id)
    lines = await run_in_threadpool(new_lines.start, tail, trial, ended)
    while True:
        for line in lines:
            yield f"data: {line}\n\n"
        if ended and not new_lines.behind:
            yield "event: end\ndata: worker ended\n\n"
            return
        if stopping.is_set():
            yield "event: end\ndata: service stopping\n\n"
            return
        if not new_lines.behind:
            await asyncio.sleep(_POLL_S)
            ended = await db.run(reads.worker_ended, worker_id)
        lines = of_trial(await run_in_threadpool(new_lines, ended), trial)
