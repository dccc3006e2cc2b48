"""Prometheus metrics of one server (its own registry, so several apps can coexist).

``GET /metrics`` returns them in the Prometheus text format. Routes are labelled by their
template (``/v1/adaptations/{adaptation_id}/predict``), never by the raw path, so the
number of series stays bounded; unmatched paths count as ``other``. Every label comes from
a closed set: methods outside :data:`METHODS` count as ``other``, and so do statuses
outside 100-599 (the server makes every status itself).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: N811
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from metafit.server.observe import call_observed

__all__ = ["Metrics", "MetricsMiddleware", "CONTENT_TYPE", "METHODS", "method_label"]

#: The HTTP methods that are labels of their own; any other method is ``other``.
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Request counts and latencies, adaptation counts, durations and concurrency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("metafit_http_requests", "HTTP requests by route, method and "
                                "status", ["route", "method", "status"], registry=r)
        self.latency = Histogram("metafit_http_request_duration_seconds", "HTTP request "
                                 "latency by route", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.adaptations = Counter("metafit_adaptations", "Adaptations by outcome (ok, "
                                   "failed: a bad support set or an error, rejected: the "
                                   "queue was full)", ["outcome"], registry=r)
        self.adaptation_seconds = Histogram("metafit_adaptation_duration_seconds",
                                            "Time adapting (in a worker, excluding queueing)",
                                            buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("metafit_adaptations_in_flight", "Adaptations running or "
                               "queued", registry=r)
        self.predictions = Counter("metafit_predictions", "Inputs classified", registry=r)
        self.unknown = Counter("metafit_predictions_unknown", "Inputs answered with the "
                               "unknown label ('none of these': a reject score below the "
                               "model's threshold)", registry=r)
        self.models_loaded = Gauge("metafit_models_loaded", "Adapted models held in memory",
                                   registry=r)

    def render(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by route template and status and times it (including
    the ones refused by the authentication and body-size middlewares inside it)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        def count(status: int | None, seconds: float) -> None:
            route = _route_template(scope, self.routes)
            method = method_label(scope.get("method", ""))
            status = 500 if status is None else status  # no response started: an error
            code = str(status) if 100 <= status <= 599 else "other"
            self.metrics.requests.labels(route, method, code).inc()
            self.metrics.latency.labels(route, method).observe(seconds)

        await call_observed(self.app, scope, receive, send, count)


def method_label(method: str) -> str:
    """``method`` if it is one of :data:`METHODS`, else ``other``: a client chooses the
    method, and a label with any value would grow the metrics without bound."""
    return method if method in METHODS else "other"


def _route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route that served ``scope``; for a request refused before
    routing (401, 413), the route it would have reached; ``other`` for none."""
    route: Any = scope.get("route")
    if route is None:
        route = next((r for r in routes if r.matches(scope)[0] is Match.FULL), None)
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"
