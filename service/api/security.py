"""Bearer tokens, the request-size limit and JSON bodies, in front of the API and the dashboard.

A token is ``read`` (GET, HEAD, OPTIONS) or ``write`` (everything). With no
token configured the service is open; ``serve`` then refuses to listen beyond
loopback unless told ``--insecure``. Tokens are compared in constant time and
never logged: headers are not logged, and ``ScrubFilter`` blanks credential-like
query parameters in the access log.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from service.spec.yaml_reader import BodyError, check_json, yaml_to_json

__all__ = ["READ_METHODS", "ApiGuard", "ScrubFilter", "guard_wsgi", "role_of", "scrub_query"]

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Bodies in YAML are turned into JSON before the app sees them.
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})
OPEN_PATHS = frozenset({"/healthz"})
# Bodies from this size on are decoded in a thread, at most this many at once.
INLINE_BODY_BYTES = 64 * 1024
DECODE_THREADS = 2
T = TypeVar("T")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def role_of(authorization: str | None, tokens: Mapping[str, str]) -> str | None:
    """The role of the token in an Authorization header (Bearer, or Basic with the
    token as password), or None. Every configured token is compared, in constant time."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    candidate = ""
    if scheme.lower() == "bearer":
        candidate = value.strip()
    elif scheme.lower() == "basic":
        try:
            candidate = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (ValueError, UnicodeDecodeError):
            return None
    role = None
    for token, token_role in tokens.items():
        if hmac.compare_digest(candidate.encode(), token.encode()):
            role = token_role
    return role if candidate else None


def _refusal(method: str, role: str | None, basic: bool) -> tuple[int, str, str, list[Any]] | None:
    if role is None:
        challenge = b'Basic realm="helios-hpo"' if basic else b'Bearer realm="helios-hpo"'
        return (
            401,
            "unauthorized",
            "a token is needed: send 'Authorization: Bearer <token>'",
            [(b"www-authenticate", challenge)],
        )
    if role == "read" and method not in READ_METHODS:
        return 403, "forbidden", f"a read token cannot {method}; use a write token", []
    return None


def _body(code: str, detail: str, field: str | None = None) -> bytes:
    errors = [] if field is None else [{"field": field, "message": detail}]
    return json.dumps({"code": code, "detail": detail, "errors": errors}).encode()


class ApiGuard:
    """ASGI middleware: token check (when tokens are configured), body-size limit, and
    bodies sent as JSON or YAML (415 otherwise)."""

    def __init__(self, app: Any, tokens: Mapping[str, str], max_body_bytes: int) -> None:
        self.app, self.tokens, self.max_body_bytes = app, dict(tokens), max_body_bytes
        self._limiter: anyio.CapacityLimiter | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.tokens and scope["path"] not in OPEN_PATHS:
            role = role_of(headers.get("authorization"), self.tokens)
            refused = _refusal(scope["method"], role, basic=False)
            if refused is not None:
                status, code, detail, extra = refused
                await _send_error(send, status, code, detail, extra)
                return
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await _send_error(send, 413, "too_large", self._too_large(), [])
            return
        if scope["method"] == "HEAD":
            await _head(self.app, scope, send)
            return
        if scope["method"] in READ_METHODS:
            await self.app(scope, receive, send)
            return
        # Read the body (at most the limit) before the app sees it: chunked bodies too.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                await _send_error(send, 413, "too_large", self._too_large(), [])
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
        if body and media_type in YAML_TYPES:
            try:
                body = (await self._decode(_yaml_body, body)).encode()
            except (BodyError, UnicodeDecodeError) as exc:
                detail = f"the body is not valid YAML: {exc}"
                await _send_error(send, 400, "invalid_yaml", detail, [], field="body")
                return
            scope = {**scope, "headers": _as_json(scope["headers"], len(body))}
        elif body and _is_json(media_type):
            try:
                await self._decode(check_json, body)
            except BodyError as exc:
                detail = f"the body is not valid JSON: {exc}"
                await _send_error(send, 400, "invalid_json", detail, [], field="body")
                return
        elif body:
            sent = f"'{media_type}'" if media_type else "no Content-Type"
            detail = (
                "send the body as JSON with 'Content-Type: application/json' "
                f"(or YAML with 'application/yaml'; got {sent})"
            )
            await _send_error(send, 415, "unsupported_media_type", detail, [])
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _decode(self, decode: Callable[[bytes], T], body: bytes) -> T:
        """``decode(body)``; a large body off the event loop, so that no request waits on
        it (a few at a time: bodies cannot take the threads the routes use)."""
        if len(body) < INLINE_BODY_BYTES:
            return decode(body)
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(DECODE_THREADS)
        return await anyio.to_thread.run_sync(decode, body, limiter=self._limiter)

    def _too_large(self) -> str:
        return f"the request body is over {self.max_body_bytes} bytes"


async def _head(app: Any, scope: Scope, send: Send) -> None:
    """HEAD answered as GET is, without the body (the routes are GET's alone). A stream
    ends once its headers are sent: the app reads the client as gone."""
    started = anyio.Event()

    async def gone() -> Message:
        await started.wait()
        return {"type": "http.disconnect"}

    async def headers_only(message: Message) -> None:
        if message["type"] == "http.response.start":
            await send(message)
            started.set()

    # ASGI 2.3: a streaming response then stops when told the client is gone (above).
    asgi = {**scope.get("asgi", {}), "spec_version": "2.3"}
    await app({**scope, "method": "GET", "asgi": asgi}, gone, headers_only)
    if started.is_set():
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _yaml_body(body: bytes) -> str:
    return yaml_to_json(body.decode("utf-8"))


def _as_json(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() not in (b"content-type", b"content-length")]
    return [*kept, (b"content-type", b"application/json"), (b"content-length", b"%d" % length)]


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def _send_error(
    send: Send,
    status: int,
    code: str,
    detail: str,
    extra: Iterable[tuple[bytes, bytes]],
    field: str | None = None,
) -> None:
    body = _body(code, detail, field)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# Query parameters whose values are credentials: never written to a log.
_SECRET_PARAMS = re.compile(
    r"([?&](?:[^=&]*(?:token|api[_-]?key|apikey|secret|password|passwd|auth)[^=&]*)=)[^&#\s]*",
    re.IGNORECASE,
)


def scrub_query(text: str) -> str:
    """``text`` with the values of credential-like query parameters replaced by ``***``."""
    return _SECRET_PARAMS.sub(r"\1***", text)


class ScrubFilter(logging.Filter):
    """Scrubs credentials from query strings in log records (uvicorn's access log among them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(scrub_query(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = scrub_query(record.msg)
        return True


def guard_wsgi(app: Any, tokens: Mapping[str, str]) -> Any:
    """The same token check in front of a WSGI app (optuna-dashboard): HTTP basic auth
    with the token as password (what a browser can send), or a bearer header."""
    if not tokens:
        return app

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        role = role_of(environ.get("HTTP_AUTHORIZATION"), tokens)
        refused = _refusal(environ["REQUEST_METHOD"], role, basic=True)
        if refused is None:
            return app(environ, start_response)
        status, code, detail, extra = refused
        reason = {401: "Unauthorized", 403: "Forbidden"}[status]
        headers = [("Content-Type", "application/json")]
        headers += [(k.decode(), v.decode()) for k, v in extra]
        start_response(f"{status} {reason}", headers)
        return [_body(code, detail)]

    return guarded
