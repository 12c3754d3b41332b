"""optuna-dashboard on the service's database, served on a port of its own.

The dashboard's page assumes it is served at the root of its origin, so it
gets its own port rather than a path under the API.
"""

from __future__ import annotations

import logging
import socketserver
import threading
from collections.abc import Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from service.api.security import guard_wsgi
from service.db import normalize_url, optuna_storage

__all__ = ["DashboardServer", "dashboard_app", "start_dashboard"]

log = logging.getLogger("helios_hpo.dashboard")


def dashboard_app(database_url: str) -> Any:
    """The dashboard's WSGI app over a cached Optuna storage on ``database_url``."""
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
    return optuna_dashboard.wsgi(url)


class DashboardServer(socketserver.ThreadingMixIn, WSGIServer):
    """A threaded WSGI server: one slow page does not hold up the others."""

    daemon_threads = True


class _LogHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base's name)
        log.debug("%s %s", self.address_string(), format % args)


def start_dashboard(
    database_url: str, host: str, port: int, tokens: Mapping[str, str] | None = None
) -> DashboardServer:
    """Serve the dashboard on ``host:port`` in a daemon thread; ``shutdown()`` stops it.

    With ``tokens``, every request needs one (HTTP basic auth with the token as
    password, or a bearer header), and read tokens cannot write.
    """
    server = DashboardServer((host, port), _LogHandler)
    server.set_app(guard_wsgi(dashboard_app(database_url), tokens or {}))
    threading.Thread(target=server.serve_forever, name="dashboard", daemon=True).start()
    log.info("optuna-dashboard on http://%s:%s", host, server.server_port)
    return server
