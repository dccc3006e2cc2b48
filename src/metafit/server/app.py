"""The FastAPI application: routes, error bodies, middlewares (see docs/serve.md).

Middlewares, outermost first: access log (path only, escaped), metrics (counts every
response, refused ones too), security headers (nosniff, a Content-Security-Policy), API
key (401), body size and time (413, 408). The routes then parse and validate the body
(JSON: :mod:`metafit.server.bodies`; image files as multipart/form-data:
:mod:`metafit.server.forms`; 415, 422), a large one in a worker thread. ``GET /`` serves
the page to try the model (:mod:`metafit.server.page`). Swagger UI and ReDoc are off: they
load their scripts from a CDN; ``/openapi.json`` is served.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import FastAPI, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from metafit._version import __version__
from metafit.server.bodies import json_body, parse_body
from metafit.server.errors import ApiError, public_message
from metafit.server.forms import FormSpec, Upload, is_multipart, parse_form
from metafit.server.guards import (
    OPEN_PATHS,
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    SecurityHeadersMiddleware,
)
from metafit.server.logs import AccessLogMiddleware
from metafit.server.metrics import CONTENT_TYPE, MetricsMiddleware
from metafit.server.page import add_page_routes, page_paths
from metafit.server.schemas import (
    AdaptationRequest,
    AdaptationResponse,
    AdaptationUpload,
    ErrorBody,
    ExamplesRequest,
    ExamplesUpload,
    Health,
    PredictRequest,
    PredictResponse,
    PredictUpload,
    RollbackRequest,
    VersionsResponse,
)
from metafit.server.service import TEXT_AS_JSON, Service, describe
from metafit.server.settings import ServerSettings

__all__ = ["create_app"]

M = TypeVar("M", bound=BaseModel)

#: Request bodies read by the routes themselves: added to the OpenAPI components.
BODIES: tuple[type[BaseModel], ...] = (AdaptationRequest, PredictRequest, AdaptationUpload,
                                       PredictUpload, ExamplesRequest, ExamplesUpload,
                                       RollbackRequest)


def _errors(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries: each status, described, with an :class:`ErrorBody`."""
    return {code: {"model": ErrorBody, "description": text}
            for code, text in described.items()}


KEY = _errors({401: "missing or invalid API key"})
BODY = _errors({408: "request body not received in time",
                413: "request body over the size limit",
                415: "body not sent as application/json (or, image files, as "
                     "multipart/form-data); a file part not declared as PNG or JPEG",
                422: "malformed body; too many examples, inputs or pixels; a bad support set"})
ID = _errors({404: "no such id", 500: "a stored adaptation cannot be read"})


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
                  docs_url=None, redoc_url=None,  # their pages load scripts from a CDN
                  description="Adapt a meta-trained model to a few labelled examples and "
                  "classify with it. See docs/serve.md.")
    app.state.service = service
    _open_routes(app, service)
    add_page_routes(app)
    _api_routes(app, service, _security(settings))
    _error_handlers(app)
    _document_bodies(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       timeout=settings.body_timeout)
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys,
                       open_paths=OPEN_PATHS | page_paths())
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics, routes=app.routes)
    app.add_middleware(AccessLogMiddleware)
    return app


#: Bodies up to this size are parsed on the event loop: parsing them costs less than the
#: trip to a worker thread and back (a one-image prediction is far smaller).
INLINE_BODY_BYTES = 64 * 1024


async def _read(request: Request, service: Service, model: type[M],
                limits: Mapping[str, int]) -> M:
    """The request's body as a validated ``model`` (:func:`metafit.server.bodies.
    parse_body`): in a worker thread, or at once for a body of at most
    :data:`INLINE_BODY_BYTES` (parsing it takes less time than the trip to a thread)."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "")
    if len(raw) <= INLINE_BODY_BYTES:
        return parse_body(raw, content_type, model, limits)
    return await anyio.to_thread.run_sync(parse_body, raw, content_type, model, limits,
                                          limiter=service.parse_limiter)


async def _read_either(request: Request, service: Service, model: type[M],
                       limits: Mapping[str, int], form: FormSpec) -> M | Upload:
    """The body as ``model`` (JSON, :func:`_read`), or as an :class:`Upload` when it is
    sent as ``multipart/form-data`` (image servers only: a text server answers 415),
    parsed as ``form`` allows (:func:`metafit.server.forms.parse_form`; in a worker
    thread past :data:`INLINE_BODY_BYTES`)."""
    content_type = request.headers.get("content-type", "")
    if not is_multipart(content_type):
        return await _read(request, service, model, limits)
    if service.kind != "image":
        raise ApiError(415, f"this server classifies text: {TEXT_AS_JSON}")
    raw = await request.body()
    if len(raw) <= INLINE_BODY_BYTES:
        return parse_form(raw, content_type, form)
    return await anyio.to_thread.run_sync(parse_form, raw, content_type, form,
                                          limiter=service.parse_limiter)


def _document_bodies(app: FastAPI) -> None:
    """Add the schemas of :data:`BODIES` (and the models they use) to the OpenAPI
    components, where the routes' ``openapi_extra`` refers to them."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            _, defs = models_json_schema([(m, "validation") for m in BODIES],
                                         ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defs.get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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
    settings = service.settings
    # the lists a body may hold, bounded while it is parsed (labels: no model adapted
    # here has more labels than support examples); a form's parts likewise
    examples = {"examples": settings.max_examples}
    inputs = {"inputs": settings.max_inputs, "labels": settings.max_examples}
    support_form = FormSpec(files=settings.max_examples, noun="examples", label_field="label",
                            labels=settings.max_examples, paired=True, steps=True,
                            calibrate=True)
    inputs_form = FormSpec(files=settings.max_inputs, noun="inputs", label_field="labels",
                           labels=settings.max_examples, paired=False)
    examples_form = FormSpec(files=settings.max_examples, noun="examples",
                             label_field="label", labels=settings.max_examples, paired=True,
                             steps=True)
    _adaptation_routes(app, service, security, examples, support_form)
    _version_routes(app, service, security, examples, examples_form)
    _prediction_routes(app, service, security, inputs, inputs_form)


def _adaptation_routes(app: FastAPI, service: Service, security: list[Any],
                       examples: dict[str, int], form: FormSpec) -> None:
    """``POST``, ``GET`` and ``DELETE`` of ``/v1/adaptations``; ``examples``: the bounded
    lists of an adaptation body; ``form``: the parts of its multipart form."""

    @app.post("/v1/adaptations", status_code=201, response_model=AdaptationResponse,
              dependencies=security, tags=["adaptations"],
              openapi_extra=json_body(AdaptationRequest, AdaptationUpload), responses={
                  **KEY, **BODY, **_errors({
                      409: "the server serves a model, not a run",
                      500: "the adaptation failed unexpectedly",
                      503: "adaptation queue full (see Retry-After)"})})
    async def create_adaptation(request: Request, response: Response) -> AdaptationResponse:
        """Adapt the run to a support set (an AdaptationRequest body, or for images an
        AdaptationUpload form); the adapted model is kept on disk under the returned id
        (it survives a restart)."""
        body = await _read_either(request, service, AdaptationRequest, examples, form)
        result = await service.adapt(body)
        response.headers["Location"] = f"/v1/adaptations/{result.id}"
        return result

    @app.get("/v1/adaptations/{adaptation_id}", response_model=AdaptationResponse,
             dependencies=security, tags=["adaptations"], responses={**KEY, **ID})
    async def get_adaptation(adaptation_id: str) -> AdaptationResponse:
        """What a kept adaptation predicts: its labels, kind, algorithm, steps, and the
        version served."""
        version, model = await service.current(adaptation_id)
        return describe(adaptation_id, model, version=version)

    @app.delete("/v1/adaptations/{adaptation_id}", status_code=204, dependencies=security,
                tags=["adaptations"], responses={**KEY, **ID})
    async def delete_adaptation(adaptation_id: str) -> Response:
        """Remove a kept adaptation from memory and disk."""
        await anyio.to_thread.run_sync(service.delete, adaptation_id)
        return Response(status_code=204)


def _version_routes(app: FastAPI, service: Service, security: list[Any],
                    examples: dict[str, int], form: FormSpec) -> None:
    """Examples added to an adaptation (a new version), its versions, rollback;
    ``examples`` and ``form``: as :func:`_adaptation_routes`'."""

    @app.post("/v1/adaptations/{adaptation_id}/examples", status_code=201,
              response_model=AdaptationResponse, dependencies=security,
              tags=["adaptations"], openapi_extra=json_body(ExamplesRequest, ExamplesUpload),
              responses={**KEY, **BODY, **ID, **_errors({
                  409: "the server serves a model, not a run; or not the adaptation's run",
                  503: "adaptation queue full (see Retry-After)"})})
    async def add_examples(adaptation_id: str, request: Request) -> AdaptationResponse:
        """Add labelled examples (of its classes or new ones; an ExamplesRequest body, or
        for images an ExamplesUpload form) to an adaptation: the run is adapted again on
        its support set plus these, with its calibration and 'none of these' setting
        refitted, into a new version that is served from now on."""
        body = await _read_either(request, service, ExamplesRequest, examples, form)
        return await service.add_examples(adaptation_id, body)

    @app.get("/v1/adaptations/{adaptation_id}/versions", response_model=VersionsResponse,
             dependencies=security, tags=["adaptations"], responses={**KEY, **ID})
    async def list_versions(adaptation_id: str) -> VersionsResponse:
        """Every version of an adaptation, oldest first, and the one served."""
        return await service.versions(adaptation_id)

    @app.post("/v1/adaptations/{adaptation_id}/rollback", response_model=AdaptationResponse,
              dependencies=security, tags=["adaptations"],
              openapi_extra=json_body(RollbackRequest), responses={
                  **KEY, **BODY, **_errors({404: "no such id or version",
                                            500: "a stored adaptation cannot be read"})})
    async def rollback(adaptation_id: str, request: Request) -> AdaptationResponse:
        """Serve another version of an adaptation from now on (an earlier one: a
        rollback; a later one: forward again)."""
        body = await _read(request, service, RollbackRequest, {})
        return await service.rollback(adaptation_id, body)


def _prediction_routes(app: FastAPI, service: Service, security: list[Any],
                       inputs: dict[str, int], form: FormSpec) -> None:
    """The two prediction routes and ``/metrics``; ``inputs``: the bounded lists of a
    prediction body; ``form``: the parts of its multipart form."""

    @app.post("/v1/adaptations/{adaptation_id}/predict", response_model=PredictResponse,
              dependencies=security, tags=["predictions"],
              openapi_extra=json_body(PredictRequest, PredictUpload),
              responses={**KEY, **BODY, **ID})
    async def predict_adapted(adaptation_id: str, request: Request) -> PredictResponse:
        """Classify inputs (a PredictRequest body, or for images a PredictUpload form)
        with an adaptation made by ``POST /v1/adaptations``."""
        body = await _read_either(request, service, PredictRequest, inputs, form)
        version, model = await service.current(adaptation_id)
        return await service.predict(model, body, version)

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=security,
              tags=["predictions"], openapi_extra=json_body(PredictRequest, PredictUpload),
              responses={**KEY, **BODY, **_errors({
                  409: "no pre-adapted model served",
                  500: "the served model cannot be loaded"})})
    async def predict(request: Request) -> PredictResponse:
        """Classify inputs (a PredictRequest body, or for images a PredictUpload form)
        with the served pre-adapted model (a model directory, or ``--model`` next to a
        run)."""
        body = await _read_either(request, service, PredictRequest, inputs, form)
        version, model = await service.served_model()
        return await service.predict(model, body, version)

    @app.get("/metrics", response_class=Response, dependencies=security,
             tags=["operations"], responses={200: {"content": {CONTENT_TYPE: {}}}, **KEY})
    async def metrics() -> Response:
        """Prometheus metrics: requests by route and status, latencies, adaptations."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        detail = public_message(exc.detail) if isinstance(exc.detail, str) else exc.detail
        return JSONResponse({"detail": detail}, exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        """422 listing where and why (bodies are validated by :func:`parse_body`; this
        covers FastAPI's own checks of a request's parameters), without the values."""
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""),
                   "type": e.get("type", "")} for e in exc.errors()]
        return JSONResponse({"detail": errors}, 422)
