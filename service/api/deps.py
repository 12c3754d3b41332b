"""Dependencies of the routes, as Annotated aliases."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Annotated, Concatenate, ParamSpec, TypeVar

import optuna
from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.artifacts.store import ModelStore
from service.launchers import Launcher
from service.settings import Settings
from service.spec.models import NAME_PATTERN
from service.storage.db import after_commit, session_scope
from service.supervisor.supervisor import Supervisor

__all__ = [
    "Database",
    "DatabaseDep",
    "LaunchersDep",
    "ModelsDep",
    "SettingsDep",
    "StorageDep",
    "StoppingDep",
    "StudyName",
]

P = ParamSpec("P")
T = TypeVar("T")


class Database:
    """Runs a route's database work as one unit of work in one worker thread.

    Routes are ``async`` and await ``run``: the session is opened, used, committed
    and closed in a single thread-pool call, so a request hops to a thread once
    (a sync route with a generator dependency hops four times). The commit happens
    before the response is sent: a client never gets a 2xx for work that did not
    commit, and its next request sees it.
    """

    def __init__(self, sessions: sessionmaker[Session], wake: Callable[[], None] | None) -> None:
        self._sessions = sessions
        self._wake = wake

    async def run(
        self, work: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``work(session, *args, **kwargs)`` in a committed session, off the event loop."""
        return await run_in_threadpool(self._unit, lambda session: work(session, *args, **kwargs))

    def _unit(self, work: Callable[[Session], T]) -> T:
        with session_scope(self._sessions) as session:
            if self._wake is not None:
                after_commit(session, self._wake)
            return work(session)


async def _database(request: Request) -> Database:
    supervisor: Supervisor | None = request.app.state.supervisor
    # A committed write may start, stop or resize workers: the supervisor looks at once.
    wake = supervisor.wake if supervisor is not None and request.method != "GET" else None
    return Database(request.app.state.sessions, wake)


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _launchers(request: Request) -> dict[str, Launcher]:
    launchers: dict[str, Launcher] = request.app.state.launchers
    return launchers


async def _stopping(request: Request) -> threading.Event:
    stopping: threading.Event = request.app.state.stopping
    return stopping


async def _models(request: Request) -> ModelStore:
    models: ModelStore = request.app.state.models
    return models


async def _storage(request: Request) -> optuna.storages.BaseStorage:
    storage: optuna.storages.BaseStorage = request.app.state.storage
    return storage


# The dependencies are async: FastAPI would run sync ones in the thread pool.
DatabaseDep = Annotated[Database, Depends(_database)]
SettingsDep = Annotated[Settings, Depends(_settings)]
LaunchersDep = Annotated[dict[str, Launcher], Depends(_launchers)]
StorageDep = Annotated[optuna.storages.BaseStorage, Depends(_storage)]
ModelsDep = Annotated[ModelStore, Depends(_models)]
# Set when the server is told to exit: streams end.
StoppingDep = Annotated[threading.Event, Depends(_stopping)]
# A name no study can have (a NUL byte, a slash) is refused before it reaches the database.
StudyName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=64)]
