"""Running an ASGI application while noting what it answered: the one place that wraps
``send`` to read the response status and times the request, for the metrics and the
access log."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["call_observed", "Observer"]

#: Called once the request is over (even when the application raised) with the response
#: status (None: no response was started) and the seconds it took.
Observer = Callable[[int | None, float], None]


async def call_observed(app: ASGIApp, scope: Scope, receive: Receive, send: Send,
                        done: Observer) -> None:
    """``await app(scope, receive, send)``, then ``done(status, seconds)``."""
    start = time.perf_counter()
    status: int | None = None

    async def send_wrapper(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        await send(message)

    try:
        await app(scope, receive, send_wrapper)
    finally:
        done(status, time.perf_counter() - start)
