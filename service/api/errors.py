"""One JSON error shape for every 4xx/5xx: {"code", "detail", "errors"}."""

from __future__ import annotations

import logging
from typing import Any, cast

import optuna
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm.exc import StaleDataError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.errors import ConflictError, DomainError, NotFoundError, SpecError
from service.read_models import ErrorBody, FieldError
from service.spec.models import UnreadableSpecError

__all__ = ["COMMON_ERRORS", "install_error_handlers"]

log = logging.getLogger(__name__)

_STATUS = {SpecError: 422, NotFoundError: 404, ConflictError: 409}


def _response(
    status: int,
    code: str,
    detail: str,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(code=code, detail=detail, errors=errors or [])
    return JSONResponse(status_code=status, content=body.model_dump(), headers=headers)


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# Documented on every operation: each comes in the one error shape.
COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("The body is not valid JSON (or YAML, when sent as application/yaml)"),
    401: _error("A token is needed (when the service has tokens)"),
    403: _error("A read token asked to change something"),
    413: _error("The body is over the size limit"),
    415: _error("The body is sent neither as application/json nor as application/yaml"),
    503: _error("The database is unreachable: retry after Retry-After seconds"),
    422: _error("Invalid input: each error names its field and why"),
}


_PARAM_TAGS = ("float", "int", "categorical")


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    # Pydantic puts the union tag after the parameter: search_space.lr.float.low.
    if len(parts) >= 3 and parts[0] == "search_space" and parts[2] in _PARAM_TAGS:
        del parts[2]
    return ".".join(parts)


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(DomainError, exc)
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 400)
    errors = (
        [FieldError(field=f, message=m) for f, m in exc.errors]
        if isinstance(exc, SpecError)
        else []
    )
    return _response(status, exc.code, exc.detail, errors)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(RequestValidationError, exc)
    for e in exc.errors():
        if e["type"] == "json_invalid":  # loc: ("body", byte offset)
            why = e.get("ctx", {}).get("error", "not JSON")
            detail = f"the body is not valid JSON: {why} at byte {e['loc'][-1]}"
            return _response(
                400, "invalid_json", detail, [FieldError(field="body", message=detail)]
            )
    errors = [
        FieldError(
            field=_field(tuple(e["loc"])) or "body",
            message=str(e["msg"]).removeprefix("Value error, "),
        )
        for e in exc.errors()
    ]
    summary = "; ".join(f"{e.field}: {e.message}" for e in errors)
    return _response(422, "invalid_request", f"invalid request: {summary}", errors)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    exc = cast(StarletteHTTPException, exc)
    code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
        exc.status_code, "http_error"
    )
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # every method of the path, not only its first route's
        methods = {
            method
            for route in request.app.router.routes
            if route.matches(request.scope)[0] != Match.NONE
            for method in getattr(route, "methods", None) or ()
        }
        headers["Allow"] = ", ".join(sorted(methods))
    return _response(exc.status_code, code, str(exc.detail), headers=headers or None)


_DATABASE_DOWN = (OperationalError, InterfaceError, optuna.exceptions.StorageInternalError)
RETRY_AFTER_S = 5


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning(
        "database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__
    )
    detail = (
        "the database is unreachable right now; the service reconnects by itself: retry in "
        f"{RETRY_AFTER_S} s (a longer outage: see the service log)"
    )
    return _response(
        503, "database_unavailable", detail, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


async def _stale(request: Request, exc: Exception) -> JSONResponse:
    # Another request or the supervisor changed the study between our read and our write.
    detail = "the study changed while this request ran; read it again, then retry if still needed"
    return _response(409, "conflict", detail)


async def _unreadable_spec(request: Request, exc: Exception) -> JSONResponse:
    # A spec stored by a newer version of the service (which this one was rolled back from).
    detail = (
        f"a study's stored spec is of a newer version of helios-hpo than this service: {exc}; "
        "run the version that created it"
    )
    return _response(409, "unreadable_spec", detail)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _response(500, "internal_error", "internal error; the service log has the details")


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and HTTP errors to the one error shape."""
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(StaleDataError, _stale)
    app.add_exception_handler(UnreadableSpecError, _unreadable_spec)
    for error in _DATABASE_DOWN:
        app.add_exception_handler(error, _database_down)
    app.add_exception_handler(Exception, _unexpected)
