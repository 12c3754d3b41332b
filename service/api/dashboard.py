"""optuna-dashboard on the service's database, served on a port of its own.

The dashboard's page assumes it is served at the root of its origin, so it
gets its own port rather than a path under the API.
"""

from __future__ import annotations

import json
import logging
import re
import socketserver
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from service.api.security import guard_wsgi, scrub_query
from service.artifacts.listing import missing_artifact_reason
from service.artifacts.store import ModelStore, artifact_dir
from service.errors import ConflictError, NotFoundError
from service.storage import optuna_queries
from service.storage.db import (
    make_engine,
    make_session_factory,
    normalize_url,
    optuna_storage,
    session_scope,
)
from service.studies import operations, reads

__all__ = ["DashboardServer", "dashboard_app", "service_rules", "start_dashboard"]

log = logging.getLogger(__name__)


def dashboard_app(database_url: str, models: ModelStore) -> Any:
    """The dashboard's WSGI app over a cached Optuna storage on ``database_url``, with the
    service's artifact store: trial pages list and download the stored models."""
    try:
        import optuna_dashboard  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise SystemExit(
            "optuna-dashboard is not installed; pip install 'helios-hpo[dashboard]'"
        ) from None
    # optuna-dashboard skips creating Optuna's tables; a new database needs them.
    optuna_storage(database_url).engine.dispose()
    # A URL (not a storage object) gets Optuna's cached storage: finished trials are
    # read once, so a large study's page stays fast.
    url = normalize_url(database_url).render_as_string(hide_password=False)
    return optuna_dashboard.wsgi(url, artifact_store=models.optuna)


class DashboardServer(socketserver.ThreadingMixIn, WSGIServer):
    """A threaded WSGI server: one slow page does not hold up the others."""

    daemon_threads = True


class _LogHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.debug("%s %s", self.address_string(), scrub_query(format % args))


_DELETE = re.compile(r"^/api/studies/(\d+)$")
_RENAME = re.compile(r"^/api/studies/(\d+)/rename$")
_DOWNLOAD = re.compile(r"^/artifacts/\d+/(?:(\d+)/)?([0-9a-fA-F-]+)$")


def _json(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


def service_rules(
    app: Any, database_url: str, data_dir: Path, models: ModelStore | None = None
) -> Any:
    """The service's rules in front of the dashboard's study-deleting and renaming endpoints.

    A study of the service is deleted as ``DELETE /studies/{name}`` deletes it (refused
    while it runs or has live workers; its row, logs and checkpoints go too), and is
    never renamed: its workers, logs and API know it by its name. Other Optuna studies
    are left to the dashboard. A method not in capitals is refused (501) rather than
    routed as its capitals, and a stored file that is gone is a 404 with the API's reason.
    """
    engine = make_engine(database_url)
    sessions = make_session_factory(engine)
    storage = optuna_storage(database_url)

    def ruled(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        if method != method.upper():
            # Methods are case-sensitive; the dashboard's router took 'delete' for DELETE,
            # past the rules below.
            reason = f"no method {method!r}: HTTP methods are case-sensitive ({method.upper()}?)"
            return _json(start_response, "501 Not Implemented", {"reason": reason})
        download = _DOWNLOAD.match(path) if method == "GET" else None
        if download is not None and models is not None:
            trial_id = int(download.group(1)) if download.group(1) else None
            with session_scope(sessions) as session:
                why = missing_artifact_reason(session, trial_id, download.group(2), models)
            if why is not None:  # the dashboard's own answer was an HTML 500
                return _json(start_response, "404 Not Found", {"reason": why})
        match = (_DELETE.match(path) if method == "DELETE" else None) or (
            _RENAME.match(path) if method == "POST" else None
        )
        if match is None:
            return app(environ, start_response)
        with engine.connect() as conn:
            name = conn.scalar(optuna_queries.study_name_query(int(match.group(1))))
            ours = name is not None and conn.scalar(reads.study_row_id_query(name)) is not None
        if name is None or not ours:
            return app(environ, start_response)
        if method == "POST":
            reason = (
                f"study {name!r} belongs to helios-hpo, whose workers, logs and API know it by "
                "its name: it cannot be renamed"
            )
            return _json(start_response, "409 Conflict", {"reason": reason})
        try:
            with session_scope(sessions) as session:
                operations.delete_study(session, name, storage, data_dir, models)
        except (ConflictError, NotFoundError) as exc:
            return _json(start_response, "409 Conflict", {"reason": exc.detail})
        return _json(start_response, "204 No Content", {})

    return ruled


def start_dashboard(
    database_url: str,
    host: str,
    port: int,
    tokens: Mapping[str, str] | None = None,
    data_dir: Path = Path("helios-hpo-data"),
    models: ModelStore | None = None,
) -> DashboardServer:
    """Serve the dashboard on ``host:port`` in a daemon thread; ``shutdown()`` stops it.

    With ``tokens``, every request needs one (HTTP basic auth with the token as
    password, or a bearer header), and read tokens cannot write. Deleting a
    study of the service follows the service's rules (``service_rules``).
    """
    server = DashboardServer((host, port), _LogHandler)
    models = models or ModelStore(folder=artifact_dir(data_dir))
    ruled = service_rules(dashboard_app(database_url, models), database_url, data_dir, models)
    server.set_app(guard_wsgi(ruled, tokens or {}))
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    log.info("optuna-dashboard on http://%s:%s", host, server.server_port)
    return server
