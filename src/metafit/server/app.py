"""The FastAPI application: routes, error bodies, middlewares (see docs/serve.md).

Middlewares, outermost first: metrics (counts every response, refused ones too), API key
(401), body size (413); then FastAPI parses and validates the JSON body (422).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer

from metafit import __version__
from metafit.server.guards import ApiKeyMiddleware, BodyLimitMiddleware
from metafit.server.metrics import CONTENT_TYPE, MetricsMiddleware
from metafit.server.schemas import (
    AdaptationRequest,
    AdaptationResponse,
    Health,
    PredictRequest,
    PredictResponse,
)
from metafit.server.service import ApiError, Service, describe
from metafit.server.settings import ServerSettings

__all__ = ["create_app"]

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    413: {"description": "request body over the size limit"},
    415: {"description": "body not sent as application/json"},
    422: {"description": "malformed body, too many examples or inputs, a bad support set"},
}
ID_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 404: {"description": "no such id"}}


def create_app(settings: ServerSettings) -> FastAPI:
    """The HTTP application serving ``settings.target`` (a run or an adapted model).

    Loads the run or model now, so a bad directory fails here rather than on a request.
    """
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(title="metafit", version=__version__, lifespan=lifespan,
                  description="Adapt a meta-trained model to a few labelled examples and "
                  "classify with it. See docs/serve.md.")
    app.state.service = service
    _open_routes(app, service)
    _api_routes(app, service, _security(settings))
    _error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics, routes=app.routes)
    return app


def _security(settings: ServerSettings) -> list[Any]:
    """Dependencies that declare the API key schemes in the OpenAPI schema (the check
    itself is :class:`ApiKeyMiddleware`, which runs before the body is read)."""
    if not settings.api_keys:
        return []
    return [Security(HTTPBearer(auto_error=False, description="Authorization: Bearer KEY")),
            Security(APIKeyHeader(name="X-API-Key", auto_error=False))]


def _open_routes(app: FastAPI, service: Service) -> None:
    @app.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """Liveness: what the server serves (no API key needed)."""
        return Health(status="ok", kind=service.kind, mode=service.mode, version=__version__)


def _api_routes(app: FastAPI, service: Service, security: list[Any]) -> None:
    """The routes behind the API key, registered on the app itself (an included router
    would hide their templates from the metrics)."""

    @app.post("/v1/adaptations", status_code=201, response_model=AdaptationResponse,
              dependencies=security, tags=["adaptations"], responses={
                  **ERRORS, 409: {"description": "the server serves a model, not a run"},
                  503: {"description": "adaptation queue full (see Retry-After)"}})
    async def create_adaptation(body: AdaptationRequest, response: Response
                                ) -> AdaptationResponse:
        """Adapt the run to a support set; the adapted model is kept on disk under the
        returned id (it survives a restart)."""
        result = await service.adapt(body)
        response.headers["Location"] = f"/v1/adaptations/{result.id}"
        return result

    @app.get("/v1/adaptations/{adaptation_id}", response_model=AdaptationResponse,
             dependencies=security, tags=["adaptations"], responses=ID_ERRORS)
    async def get_adaptation(adaptation_id: str) -> AdaptationResponse:
        """What a kept adaptation predicts: its labels, kind, algorithm, steps."""
        return describe(adaptation_id, await service.adaptation(adaptation_id))

    @app.delete("/v1/adaptations/{adaptation_id}", status_code=204, dependencies=security,
                tags=["adaptations"], responses=ID_ERRORS)
    async def delete_adaptation(adaptation_id: str) -> Response:
        """Remove a kept adaptation from memory and disk."""
        service.delete(adaptation_id)
        return Response(status_code=204)

    @app.post("/v1/adaptations/{adaptation_id}/predict", response_model=PredictResponse,
              dependencies=security, tags=["predictions"], responses=ID_ERRORS)
    async def predict_adapted(adaptation_id: str, body: PredictRequest) -> PredictResponse:
        """Classify inputs with an adaptation made by ``POST /v1/adaptations``."""
        model = await service.adaptation(adaptation_id)
        return await service.predict(model, body)

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=security,
              tags=["predictions"],
              responses={**ERRORS, 409: {"description": "no pre-adapted model served"}})
    async def predict(body: PredictRequest) -> PredictResponse:
        """Classify inputs with the served pre-adapted model (a model directory, or
        ``--model`` next to a run)."""
        return await service.predict(service.served_model(), body)

    @app.get("/metrics", response_class=Response, dependencies=security,
             tags=["operations"],
             responses={200: {"content": {CONTENT_TYPE: {}}}, 401: ERRORS[401]})
    async def metrics() -> Response:
        """Prometheus metrics: requests by route and status, latencies, adaptations."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: Exception) -> JSONResponse:
        """422 listing where and why, without echoing the inputs (they can be megabytes
        of base64); 415 for a body that is not declared as JSON (it was not parsed)."""
        assert isinstance(exc, RequestValidationError)
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "POST" and not (content_type == "application/json"
                                             or content_type.endswith("+json")):
            return JSONResponse({"detail": "the request body must be JSON, sent with "
                                 "'Content-Type: application/json'"}, 415)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                   "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, 422)
