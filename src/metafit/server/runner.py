"""Run the application with uvicorn on a socket bound here (so ``port=0`` works and the
logged URL is the real one), shutting down gracefully on SIGINT / SIGTERM.

uvicorn runs with the server's connection guards (:func:`uvicorn_config`): a header
timeout (:mod:`metafit.server.protocol`), a keep-alive timeout, a cap on connections and
requests at once, and without its own access log (it would log query strings and raw
paths; :mod:`metafit.server.logs` logs requests instead).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading

import torch
import uvicorn

from metafit.server.app import create_app
from metafit.server.protocol import header_timeout_protocol
from metafit.server.settings import ServerSettings, is_loopback

__all__ = ["serve", "bind", "torch_threads", "uvicorn_config"]

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S = 30


def torch_threads(workers: int) -> int:
    """Intra-op threads per torch call: the cores shared by the adaptation workers plus
    one share for predictions, at least one. Each worker and each prediction thread runs
    its own team, so a larger count oversubscribes the cores once calls overlap
    (``benchmarks/RESULTS.md``, "HTTP serving under load")."""
    return max(1, (os.cpu_count() or 1) // (max(1, workers) + 1))


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: a free one)."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when
    # the listening socket says so; without it a keep-alive response waits on Nagle's
    # algorithm and the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(settings: ServerSettings, host: str = "127.0.0.1", port: int = 8000,
          insecure_no_auth: bool = False, threads: int | None = None) -> None:
    """Serve ``settings.target`` on ``host:port`` until interrupted.

    Raises:
        ValueError: no API key is configured and ``host`` is not a loopback address
            (unless ``insecure_no_auth``); the address is taken or cannot be bound.
    """
    if not settings.api_keys and not is_loopback(host) and not insecure_no_auth:
        raise ValueError(f"refusing to serve on {host} without API keys: give --api-key-file "
                         "or METAFIT_API_KEYS, or --insecure-no-auth to serve openly")
    try:
        sock = bind(host, port)  # first: a taken port fails before the model loads
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e})") from e
    with sock:
        torch.set_num_threads(threads or torch_threads(settings.workers))
        app = create_app(settings)
        name = f"[{host}]" if ":" in host else host
        url = f"http://{name}:{sock.getsockname()[1]}"
        service = app.state.service
        log.info("serving %s (%s %s) at %s: page %s/, adaptations in %s, %s",
                 settings.target, service.kind, service.mode, url, url,
                 settings.adaptations_dir if service.mode == "run" else "-",
                 f"{len(settings.api_keys)} API key(s)" if settings.api_keys else "NO API KEY")
        _run(uvicorn.Server(uvicorn_config(app, settings)), sock)
    log.info("server stopped")


def uvicorn_config(app: object, settings: ServerSettings) -> uvicorn.Config:
    """uvicorn's configuration for ``app`` with the timeouts and limits of ``settings``:
    the h11 protocol with ``header_timeout``, ``keep_alive_timeout``, ``max_connections``
    (uvicorn's ``limit_concurrency``: 503 beyond), no uvicorn access log, no logging
    configuration of its own (the caller's applies)."""
    return uvicorn.Config(app, log_config=None, access_log=False,  # type: ignore[arg-type]
                          http=header_timeout_protocol(settings.header_timeout),
                          timeout_keep_alive=settings.keep_alive_timeout,
                          limit_concurrency=settings.max_connections,
                          timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S)


def _run(server: uvicorn.Server, sock: socket.socket) -> None:
    """``server.run`` on ``sock`` until SIGINT or SIGTERM. uvicorn shuts down gracefully
    on either, then re-raises the signal with the handler it found: SIGTERM's default
    would kill the process before the caller logs, so it becomes a KeyboardInterrupt."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
