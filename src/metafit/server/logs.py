"""The server's access log, and escaping of client-supplied text before it is logged.

The access log (logger ``metafit.server.access``, INFO) replaces uvicorn's: one line per
response, ``CLIENT - "METHOD PATH HTTP/V" STATUS (SECONDS s)``. It never holds a query
string (a key sent as ``?api_key=`` must not land in a log file) and every client-chosen
part is passed through :func:`clean`, so ``%0a`` in a path cannot forge a log line.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from metafit.server.observe import call_observed

__all__ = ["AccessLogMiddleware", "clean", "ACCESS_LOGGER"]

ACCESS_LOGGER = "metafit.server.access"

access_log = logging.getLogger(ACCESS_LOGGER)


def clean(text: object, limit: int = 200) -> str:
    """``text`` made safe to put in one log line: backslashes, quotes, control and
    non-ASCII characters escaped (``\\n``, ``\\x1b``, ``\\u2028``), cut to ``limit``
    characters (``...`` appended when cut).

    The result is printable ASCII without a line break, whatever the client sent.
    """
    escaped = str(text).encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return escaped if len(escaped) <= limit else escaped[:limit] + "..."


def client_address(scope: Scope) -> str:
    """``host:port`` of the peer (``-`` when unknown)."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "-"


class AccessLogMiddleware:
    """Log every HTTP request once its response has started (or the connection ended):
    client address, method, path without query string, HTTP version, status, seconds."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not access_log.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return

        def log(status: int | None, seconds: float) -> None:
            access_log.info('%s - "%s %s HTTP/%s" %s (%.3f s)', client_address(scope),
                            clean(scope.get("method", ""), 20), clean(scope.get("path", "")),
                            clean(scope.get("http_version", ""), 8),
                            status if status is not None else "-", seconds)

        await call_observed(self.app, scope, receive, send, log)
