"""Dependencies of the routes, as Annotated aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import optuna
from fastapi import Depends, Request
from sqlalchemy.orm import Session

from service.db import after_commit, session_scope
from service.settings import Settings
from service.supervisor import Supervisor

__all__ = ["SessionDep", "SettingsDep", "StorageDep"]


def _session(request: Request) -> Iterator[Session]:
    """A unit of work per request: committed when the route returns, rolled back on error."""
    with session_scope(request.app.state.sessions) as session:
        if request.method != "GET":
            supervisor: Supervisor | None = request.app.state.supervisor
            if supervisor is not None:
                after_commit(session, supervisor.wake)
        yield session


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _storage(request: Request) -> optuna.storages.BaseStorage:
    storage: optuna.storages.BaseStorage = request.app.state.storage
    return storage


# scope="function": commit before the response is sent, so a client never gets a
# 2xx for work that did not commit, and a following request sees it.
SessionDep = Annotated[Session, Depends(_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(_settings)]
StorageDep = Annotated[optuna.storages.BaseStorage, Depends(_storage)]
