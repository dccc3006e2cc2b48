"""uvicorn's h11 HTTP protocol with a header timeout (uvicorn has none of its own).

A connection that opens and then sends its request headers a byte at a time (slowloris)
would otherwise be held forever: uvicorn's keep-alive timer only runs between a response
and the first byte of the next request. Here a connection gets ``header_timeout`` seconds,
from its opening and again from each response it receives, to complete a request's
headers; a connection still without a request in progress after that is closed.
Slow bodies are :class:`metafit.server.guards.BodyLimitMiddleware`'s business (408).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["header_timeout_protocol", "HeaderTimeoutProtocol"]

log = logging.getLogger(__name__)


class HeaderTimeoutProtocol(H11Protocol):
    """:class:`H11Protocol` closing connections that take longer than
    :attr:`header_timeout` seconds to send a request's headers."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers are due within the timeout too

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        """Close the connection unless a request (complete headers) is in progress."""
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            client = self.client[0] if self.client else "?"
            log.info("closed a connection from %s: no complete request headers within %g s",
                     client, self.header_timeout)
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutProtocol]:
    """A :class:`HeaderTimeoutProtocol` class with ``header_timeout = seconds`` (uvicorn
    takes a protocol class, not an instance)."""
    if not seconds > 0:
        raise ValueError(f"header timeout must be > 0 seconds, got {seconds!r}")
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": seconds})
