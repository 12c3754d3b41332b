"""The app factory: engine, Optuna storage and supervisor are built in the lifespan."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI

from service import __version__
from service.api.errors import COMMON_ERRORS, install_error_handlers
from service.api.routes import studies, tasks, workers
from service.api.security import ApiGuard
from service.artifacts.store import ModelStore
from service.launchers import Launcher, from_settings
from service.settings import Settings, get_settings
from service.storage.db import DB_ERRORS, make_engine, make_session_factory, optuna_storage
from service.studies.operations import retry_failed_trial
from service.supervisor.supervisor import Supervisor

__all__ = ["create_app"]

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    supervise: bool = True,
    launchers: Mapping[str, Launcher] | None = None,
) -> FastAPI:
    """Build the API.

    Args:
        settings: the service's settings (default: from the environment).
        supervise: start workers; False serves without (tests, read replicas).
        launchers: the launchers workers start through (default: those the settings
            enable, see ``service.launchers.from_settings``).
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The thread pool runs every route's database work (service.api.deps.Database).
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        engine = make_engine(settings.database_url)
        app.state.settings = settings
        app.state.models = ModelStore.of(settings)
        app.state.sessions = make_session_factory(engine)
        # Heartbeats on: the supervisor fails stale trials of studies left without workers.
        app.state.storage = optuna_storage(
            settings.database_url,
            heartbeat_interval=settings.heartbeat_interval_s,
            grace_period=settings.heartbeat_grace_s,
            stale_trial_callback=retry_failed_trial(app.state.sessions),
        )
        app.state.supervisor = None
        app.state.launchers = dict(launchers if launchers is not None else from_settings(settings))
        if supervise:
            app.state.supervisor = Supervisor(
                engine,
                app.state.sessions,
                app.state.storage,
                app.state.launchers,
                interval_s=settings.supervisor_interval_s,
                stop_timeout_s=settings.worker_stop_timeout_s,
                grace_s=settings.heartbeat_grace_s,
                data_dir=settings.data_dir.resolve(),
                outage_s=settings.launcher_outage_s,
                checkpoint_budget_bytes=settings.checkpoint_budget_bytes,
                models=app.state.models,
            )
            try:
                # Before the API serves: a half-created study must not be seen, nor its name
                # refused, by the first requests.
                await to_thread.run_sync(app.state.supervisor.adopt)
            except DB_ERRORS as exc:  # the database is away: the first tick does it
                log.warning("cannot recover after the last run yet (%s); retrying", exc)
            app.state.supervisor.start()
        try:
            yield
        finally:
            if app.state.supervisor is not None:
                app.state.supervisor.close()
            app.state.storage.remove_session()
            engine.dispose()

    app = FastAPI(
        title="helios-hpo",
        summary="Hyperparameter search over HTTP: Optuna studies trained by helios workers.",
        version=__version__,
        lifespan=lifespan,
    )
    # Set when the server is told to exit: log streams end, so that it can.
    app.state.stopping = threading.Event()
    install_error_handlers(app)
    app.add_middleware(ApiGuard, tokens=settings.tokens(), max_body_bytes=settings.max_body_bytes)
    for router in (studies.router, tasks.router, workers.router):
        app.include_router(router, responses=COMMON_ERRORS)
    return app
