"""ASGI middlewares that refuse a request before the application parses it: a missing or
wrong API key (401), a body over the size limit (413) or too slow to arrive (408); and
the one that sets the browser's security headers on every response.

Both refusing middlewares answer with the same JSON shape as the application's errors:
``{"detail": "..."}``.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Collection

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metafit.server.logs import clean

__all__ = ["ApiKeyMiddleware", "BodyLimitMiddleware", "SecurityHeadersMiddleware",
           "OPEN_PATHS", "API_CSP"]

log = logging.getLogger(__name__)

# Paths anyone may read: the health check and the API's own description (the page and its
# files are added by the app).
OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})

#: The Content-Security-Policy of a response that sets none (the API's JSON and text):
#: a browser opening one loads nothing from it and does not frame it.
API_CSP = b"default-src 'none'; frame-ancestors 'none'"


async def send_error(send: Send, status: int, detail: str,
                     headers: Collection[tuple[bytes, bytes]] = ()) -> None:
    """Send a complete ``{"detail": detail}`` JSON response."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def presented_key(scope: Scope) -> bytes | None:
    """The key in ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``, if any."""
    for name, value in scope.get("headers", []):
        if name == b"x-api-key":
            return bytes(value).strip()
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
    return None


class SecurityHeadersMiddleware:
    """Adds ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer`` to
    every HTTP response, and :data:`API_CSP` to a response without a
    Content-Security-Policy of its own (the page sets its own)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {bytes(name).lower() for name, _ in headers}
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"no-referrer")]
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", API_CSP))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class ApiKeyMiddleware:
    """401 for HTTP requests outside ``open_paths`` (default :data:`OPEN_PATHS`) without a
    valid key.

    Keys are compared with :func:`hmac.compare_digest` against every configured key (no
    early exit), and neither the presented nor the configured keys are ever logged. Keys
    are read from headers only: a query string is never consulted (nor logged).
    """

    def __init__(self, app: ASGIApp, keys: Collection[str],
                 open_paths: Collection[str] = OPEN_PATHS) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.open_paths = frozenset(open_paths)

    def valid(self, key: bytes | None) -> bool:
        if key is None:
            return False
        matches = [hmac.compare_digest(key, k) for k in self.keys]
        return any(matches)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if self.valid(presented_key(scope)):
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("?", 0)
        log.info("refused %s %s from %s: missing or invalid API key",
                 clean(scope.get("method", ""), 20), clean(scope["path"]), client[0])
        await send_error(send, 401, "missing or invalid API key: send 'Authorization: "
                         "Bearer KEY' or 'X-API-Key: KEY'", [(b"www-authenticate", b"Bearer")])


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``, before the application sees any of it;
    408 for a body not complete ``timeout`` seconds after the application asked for it.

    A declared ``Content-Length`` over the limit is refused without reading the body; a
    body without one (chunked) is read up to the limit and refused as soon as it passes.
    A body within the limit is buffered and handed on unchanged.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    def too_large(self) -> str:
        return f"request body larger than the server's limit of {self.max_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await send_error(send, 400, "malformed Content-Length header")
                return
            if length > self.max_bytes:
                await send_error(send, 413, self.too_large(), [(b"connection", b"close")])
                return
        body: bytes | int | None = None
        with anyio.move_on_after(self.timeout):
            body = await self._read(receive)
        if body is None:  # not received in time
            await send_error(send, 408, f"request body not received within {self.timeout:g} "
                             "s", [(b"connection", b"close")])
            return
        if isinstance(body, int):
            if body > 0:  # over the limit
                await send_error(send, 413, self.too_large(), [(b"connection", b"close")])
            return  # else the client went away
        data: bytes = body
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> bytes | int:
        """The whole body; or the size read so far once it passes ``max_bytes``; or 0
        when the client went away."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return 0
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return size
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
