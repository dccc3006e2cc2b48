"""What the endpoints do, apart from HTTP: adapt a run to a support set in the worker
pool and keep the result, and predict with an adapted model.

Every failure a client can cause is an :class:`ApiError` carrying its HTTP status.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from pydantic import ValidationError

from metafit.deploy import AdaptedModel, Adapter, InputError, ModelDirError, SupportError
from metafit.deploy.calibrate import fit_on_support
from metafit.deploy.reject import RejectRequest
from metafit.deploy.update import RunMismatch
from metafit.deploy.versions import current_version
from metafit.server.bodies import too_many
from metafit.server.errors import ApiError, public_message
from metafit.server.forms import FILE, Upload
from metafit.server.limits import check_images, decode_images
from metafit.server.metrics import Metrics
from metafit.server.pool import AdaptationPool, PoolFull
from metafit.server.schemas import (
    AdaptationRequest,
    AdaptationResponse,
    ExamplesRequest,
    ImageExample,
    ImageInput,
    Prediction,
    PredictRequest,
    PredictResponse,
    RejectInfo,
    RejectOptions,
    RollbackRequest,
    TextExample,
    VersionDescription,
    VersionsResponse,
)
from metafit.server.settings import ServerSettings
from metafit.server.store import AdaptationStore, UnknownAdaptation, UnknownVersion

__all__ = ["Service", "ApiError", "describe", "TEXT_AS_JSON"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How a text server wants its inputs, for the 415 to a form.
TEXT_AS_JSON = "send the sentences as JSON (multipart/form-data is for image files)"


class Service:
    """The served run (adapter) or adapted model, the adaptations, the worker pool."""

    def __init__(self, settings: ServerSettings) -> None:
        """Load what ``settings.target`` holds.

        Raises:
            FileNotFoundError: the target does not exist.
            ModelDirError: the target is neither a run nor an adapted model.
            CheckpointError: the run has no usable checkpoint.
        """
        self.settings = settings
        self.metrics = Metrics()
        self.adapter: Adapter | None = None
        self.model: AdaptedModel | None = None
        if not settings.target.is_dir():
            raise FileNotFoundError(f"{settings.target} does not exist or is not a directory")
        if settings.is_run:
            self.adapter = Adapter.from_run(settings.target, which=settings.checkpoint,
                                            classifier=settings.classifier,
                                            penalty=settings.classifier_penalty)
        else:
            try:
                self.model = AdaptedModel.load(settings.target)
            except ModelDirError as e:
                raise ModelDirError(f"{settings.target} is neither a metafit run (no "
                                    f"config.yaml) nor an adapted model ({e})") from e
        if settings.model_dir is not None:
            self.model = AdaptedModel.load(settings.model_dir)
        # the served model directory: its `current` version is re-read on every request
        self.model_path = settings.model_dir if settings.model_dir is not None else (
            None if self.model is None else settings.target)
        self.model_version = (None if self.model_path is None
                              else current_version(self.model_path))
        if self.adapter is not None:
            self.kind = self.adapter.kind
        else:
            assert self.model is not None
            self.kind = self.model.kind
        if self.model is not None and self.model.kind != self.kind:
            raise ModelDirError(f"{settings.model_dir} classifies {self.model.kind}, "
                                f"the run {self.kind}")
        self.mode = "run" if self.adapter is not None else "model"
        self.store = AdaptationStore(settings.adaptations_dir, settings.cache_size,
                                     on_size=self.metrics.models_loaded.set)
        self.pool = AdaptationPool(settings.workers, settings.queue)
        self.predict_limiter = CapacityLimiter(os.cpu_count() or 1)
        # bodies parsed and images checked at once (each holds a body's objects in memory)
        self.parse_limiter = CapacityLimiter(os.cpu_count() or 1)

    def close(self) -> None:
        """Cancel queued adaptations, wait for the running ones."""
        self.pool.shutdown()

    # adaptation ------------------------------------------------------------------------

    async def adapt(self, req: AdaptationRequest | Upload) -> AdaptationResponse:
        """Adapt the run to ``req``'s support set (JSON, or an uploaded form) in a worker,
        with ``req.calibrate`` calibrating its probabilities as ``metafit adapt
        --calibrate`` does and ``req.reject`` fitting a "none of these" threshold, both
        on the same held-out folds (:func:`metafit.deploy.calibrate.fit_on_support`, in
        the same worker); save and return it."""
        adapter = self.adapter
        if adapter is None:
            raise ApiError(409, "this server serves an adapted model and cannot adapt: start "
                           "`metafit serve` on a run directory to post support sets")
        steps = self.settings.steps if req.steps is None else req.steps
        self._check_counts(req, steps)
        inputs, labels = await self._examples(req)
        reject = _reject_request(req.reject, labels)
        adaptation_id = self.store.new_id()

        def job() -> tuple[AdaptedModel, float]:
            start = time.perf_counter()
            model = adapter.adapt(inputs, labels, steps=steps)
            if req.calibrate or reject is not None:  # held-out folds: up to 10 more
                model = fit_on_support(model, adapter.adapt_tensors, req.calibrate, reject)
            seconds = time.perf_counter() - start
            self.store.put(adaptation_id, model)
            return model, seconds

        model, seconds = await self._run(job, adaptation_id)
        log.info("adaptation %s: %d examples, %d labels, %s steps, temperature %.3g, "
                 "%.2f s", adaptation_id, len(labels), len(model.label_names),
                 model.info.get("steps"), model.temperature, seconds)
        return describe(adaptation_id, model, seconds, version=1)

    async def add_examples(self, adaptation_id: str, req: ExamplesRequest | Upload
                           ) -> AdaptationResponse:
        """Add ``req``'s labelled examples (JSON, or an uploaded form) to an adaptation
        and adapt again on its support set plus them, in a worker, into a new version
        that is served from now on (:meth:`AdaptationStore.update
        <metafit.server.store.AdaptationStore.update>`; the calibration and reject
        setting are refitted). The same limits as :meth:`adapt` apply, and the
        adaptation's support set may hold at most ``max_examples`` examples in all."""
        adapter = self.adapter
        if adapter is None:
            raise ApiError(409, "this server serves an adapted model and cannot adapt: start "
                           "`metafit serve` on a run directory to add examples")
        if isinstance(req, Upload) and (req.reject is not None or req.calibrate):
            raise ApiError(422, "examples keep the adaptation's calibration and 'none of "
                           "these' setting (refitted on the new support set): send no "
                           "'reject' or 'calibrate'")
        count = self._check_counts(req, req.steps)
        most = self.settings.max_examples
        held = int((await self.adaptation(adaptation_id)).info.get("support_size") or 0)
        if held + count > most:
            raise ApiError(422, f"the adaptation holds {held} examples: {count} more would "
                           f"pass the server's {most} per adaptation")
        inputs, labels = await self._examples(req)

        def job() -> tuple[tuple[int, AdaptedModel], float]:
            start = time.perf_counter()
            try:
                made = self.store.update(adaptation_id, inputs, labels, adapter, req.steps,
                                         max_total=most)  # again, under the update lock
            except RunMismatch as e:
                log.warning("adaptation %s: %s", adaptation_id, e)
                raise ApiError(409, "this adaptation was made from another run, or with "
                               "another checkpoint or classifier, than this server serves: "
                               "add examples through a server of its own run") from None
            return made, time.perf_counter() - start

        try:
            (version, model), seconds = await self._run(job, adaptation_id)
        except UnknownAdaptation:
            raise ApiError(404, f"no adaptation with id {adaptation_id!r}") from None
        log.info("adaptation %s: version %d, %d examples added (%d in all), %d labels, "
                 "%.2f s", adaptation_id, version, len(labels), model.info["support_size"],
                 len(model.label_names), seconds)
        return describe(adaptation_id, model, seconds, version=version)

    def _check_counts(self, req: AdaptationRequest | ExamplesRequest | Upload,
                      steps: int | None) -> int:
        """The number of examples ``req`` holds, once it and ``steps`` are within the
        server's limits (else a 422)."""
        s = self.settings
        count = len(req.files) if isinstance(req, Upload) else len(req.examples)
        if count > s.max_examples:
            raise ApiError(422, too_many("examples", count, s.max_examples))
        if steps is not None and steps > s.max_steps:
            raise ApiError(422, f"steps={steps}: the server allows at most {s.max_steps}")
        return count

    async def _examples(self, req: AdaptationRequest | ExamplesRequest | Upload
                        ) -> tuple[list[Any], list[str]]:
        """The inputs (texts, or checked image files) and labels of a support set."""
        if isinstance(req, Upload):
            return await self._check_files(req.files, "support set: "), req.labels
        return (await self._prepare(req.examples, "examples"),
                [e.label for e in req.examples])

    async def _run(self, job: Callable[[], tuple[T, float]], adaptation_id: str
                   ) -> tuple[T, float]:
        """Run an adaptation ``job`` (its result and seconds) in the worker pool, counted in
        the metrics: 503 when the pool is full, 422 for a bad support set, 500 for
        anything else (logged); :class:`UnknownAdaptation` and an :class:`ApiError` of
        the job pass through."""
        s = self.settings
        try:
            future = self.pool.submit(job)
        except PoolFull:
            self.metrics.adaptations.labels("rejected").inc()
            retry = self.pool.retry_after()
            raise ApiError(503, f"all {s.workers} adaptation workers are busy and "
                           f"{s.queue} adaptations are queued: retry in {retry} s",
                           {"Retry-After": str(retry)}) from None
        self.metrics.in_flight.inc()
        try:
            result, seconds = await asyncio.wrap_future(future)
        except SupportError as e:
            self.metrics.adaptations.labels("failed").inc()
            raise ApiError(422, public_message(f"support set: {e}")) from None
        except (UnknownAdaptation, ApiError):
            self.metrics.adaptations.labels("failed").inc()
            raise
        except Exception:
            self.metrics.adaptations.labels("failed").inc()
            log.exception("adaptation %s failed", adaptation_id)
            raise ApiError(500, "the adaptation failed (the server log has the cause)") \
                from None
        finally:
            self.metrics.in_flight.dec()
        self.metrics.adaptations.labels("ok").inc()
        self.metrics.adaptation_seconds.observe(seconds)
        return result, seconds

    async def versions(self, adaptation_id: str) -> VersionsResponse:
        """Every version of an adaptation."""
        rows = await self._stored(self.store.versions, adaptation_id)
        current = next((r.version for r in rows if r.current), None)
        if current is None:  # deleted, or no complete version (cannot be served)
            raise ApiError(404, f"no adaptation with id {adaptation_id!r}")
        return VersionsResponse(id=adaptation_id, current=current, versions=[
            VersionDescription(version=r.version, created=r.created, labels=r.classes,
                               examples=r.support_size, parent=r.parent, added=r.added,
                               current=r.current) for r in rows])

    async def rollback(self, adaptation_id: str, req: RollbackRequest) -> AdaptationResponse:
        """Serve version ``req.version`` of an adaptation from now on (every server sharing
        the store follows on its next request)."""
        try:
            version, model = await self._stored(self.store.rollback, adaptation_id,
                                                req.version)
        except UnknownVersion:
            raise ApiError(404, f"adaptation {adaptation_id} has no version "
                           f"{req.version}") from None
        log.info("adaptation %s: version %d is current", adaptation_id, version)
        return describe(adaptation_id, model, version=version)

    # prediction ------------------------------------------------------------------------

    async def adaptation(self, adaptation_id: str) -> AdaptedModel:
        """The adapted model of ``adaptation_id`` (:meth:`current`)."""
        return (await self.current(adaptation_id))[1]

    async def current(self, adaptation_id: str) -> tuple[int, AdaptedModel]:
        """The version of ``adaptation_id`` served now and its model (the pointer read from
        disk on every call; loaded in a thread when not cached)."""
        return await self._stored(self.store.get_version, adaptation_id)

    async def _stored(self, call: Callable[..., T], adaptation_id: str, *args: Any) -> T:
        """``call(adaptation_id, *args)``, a method of the store, in a thread: a 404 for
        an unknown (or deleted) id, a 500 (the cause logged) for a stored adaptation that
        cannot be read."""
        try:
            return await anyio.to_thread.run_sync(call, adaptation_id, *args)
        except UnknownAdaptation:
            raise ApiError(404, f"no adaptation with id {adaptation_id!r}") from None
        except ModelDirError:
            log.exception("adaptation %s cannot be read", adaptation_id)
            raise ApiError(500, f"adaptation {adaptation_id} is stored but cannot be loaded "
                           "(the server log has the cause)") from None

    async def served_model(self) -> tuple[int | None, AdaptedModel]:
        """The pre-adapted model of ``POST /v1/predict`` and its version: the model
        directory's current version, read again when another process has chosen another
        (``metafit adapt --update``, ``metafit versions --use``)."""
        if self.model is None or self.model_path is None:
            raise ApiError(409, "this server serves a run without a pre-adapted model: adapt "
                           "with POST /v1/adaptations and predict with POST "
                           "/v1/adaptations/{id}/predict, or start the server with --model")
        path = self.model_path
        try:
            version = current_version(path)  # one small read
            if version != self.model_version:
                model = await anyio.to_thread.run_sync(AdaptedModel.load, path, version)
                if model.kind != self.kind:
                    raise ModelDirError(f"{path} version {version} classifies {model.kind}")
                self.model, self.model_version = model, version
                log.info("serving %s version %d", path, version)
        except ModelDirError:
            log.exception("the served model %s cannot be loaded", path)
            raise ApiError(500, "the served model cannot be loaded (the server log has the "
                           "cause)") from None
        return self.model_version, self.model

    def delete(self, adaptation_id: str) -> None:
        """Forget an adaptation and remove it from disk."""
        try:
            self.store.delete(adaptation_id)
        except UnknownAdaptation:
            raise ApiError(404, f"no adaptation with id {adaptation_id!r}") from None
        log.info("adaptation %s deleted", adaptation_id)

    async def predict(self, model: AdaptedModel, req: PredictRequest | Upload,
                      version: int | None = None) -> PredictResponse:
        """Classify ``req``'s inputs (JSON, or uploaded image files) with ``model`` (in a
        thread: the event loop stays free); ``version``: the adaptation's version that
        ``model`` is, named in the response."""
        if isinstance(req, Upload):
            where, decode = FILE, partial(self._files, req.files)
            count = len(req.files)
        else:
            where, decode = "inputs", partial(self._decode, req.inputs, "inputs")
            count = len(req.inputs)
        if count > self.settings.max_inputs:
            raise ApiError(422, too_many("inputs", count, self.settings.max_inputs))
        candidates = self._candidates(model, req.labels or None)

        def decode_and_predict() -> list[dict[str, Any]]:  # one trip to a worker thread
            return model.predict(decode())

        try:
            raw = await anyio.to_thread.run_sync(decode_and_predict,
                                                 limiter=self.predict_limiter)
        except InputError as e:
            raise ApiError(422, public_message(f"{where}: {e}")) from None
        self.metrics.predictions.inc(len(raw))
        self.metrics.unknown.inc(sum(bool(p.get("rejected")) for p in raw))
        return PredictResponse(predictions=[_restrict(p, candidates) for p in raw],
                               version=version)

    def _candidates(self, model: AdaptedModel, labels: list[str] | None) -> list[str] | None:
        if labels is None:
            return None
        known = list(model.label_names)
        unknown = [label for label in labels if label not in known]
        if unknown:
            raise ApiError(422, f"unknown labels {unknown}: the model predicts {known}")
        return labels

    async def _check_files(self, files: Sequence[bytes], prefix: str) -> list[bytes]:
        """:meth:`_files` in a thread (image headers)."""
        return await anyio.to_thread.run_sync(self._files, files, prefix,
                                              limiter=self.parse_limiter)

    def _files(self, files: Sequence[bytes], prefix: str = "") -> list[bytes]:
        """Uploaded image ``files`` (the form's ``file`` parts), once each is a PNG or JPEG
        within the pixel caps (checked from their headers), or a 422."""
        if self.kind != "image":  # the routes refuse forms to a text server before this
            raise ApiError(415, f"this server classifies text: {TEXT_AS_JSON}")
        s = self.settings
        return check_images(((f"{FILE}[{i}]", f) for i, f in enumerate(files)), FILE,
                            s.max_image_pixels, s.max_request_pixels, prefix)

    async def _prepare(self, items: Sequence[object], where: str) -> list[Any]:
        """:meth:`_decode` in a thread (base64 and image headers)."""
        return await anyio.to_thread.run_sync(self._decode, items, where,
                                              limiter=self.parse_limiter)

    def _decode(self, items: Sequence[object], where: str) -> list[Any]:
        """The texts, or the image file bytes, of request ``items`` (``where``: their
        field, for messages): all of the served kind, images within the pixel caps
        (checked from their headers), or a 422."""
        s = self.settings
        if self.kind == "image":
            images = [x.image for x in items if isinstance(x, ImageExample | ImageInput)]
            if len(images) != len(items):
                raise ApiError(422, f"this server classifies images: each of {where} needs "
                               "'image' (a base64 PNG or JPEG)")
            return decode_images(images, where, s.max_image_pixels, s.max_request_pixels,
                                 prefix="support set: " if where == "examples" else "")
        texts = [x.text if isinstance(x, TextExample) else x for x in items
                 if isinstance(x, TextExample | str)]
        if len(texts) != len(items):
            raise ApiError(422, f"this server classifies text: {where} must be texts "
                           "(examples: {'text', 'label'}; inputs: strings)")
        return texts


def _reject_request(options: RejectOptions | str | None, labels: Sequence[str]
                    ) -> RejectRequest | None:
    """The reject setting a request asks for (a form sends it as JSON text), or a 422:
    malformed options, or an unknown label that is also a class name."""
    if options is None:
        return None
    if isinstance(options, str):
        try:
            options = RejectOptions.model_validate_json(options)
        except ValidationError as e:
            raise ApiError(422, [{"loc": ["body", "reject", *err["loc"]], "msg": err["msg"],
                                  "type": err["type"]} for err in e.errors()]) from None
    if options.label in set(labels):
        raise ApiError(422, f"reject.label {options.label!r} is also a class name: the "
                       "unknown label must differ from every class")
    return RejectRequest(options.score, options.recall, options.threshold, options.label)


def describe(adaptation_id: str, model: AdaptedModel, seconds: float | None = None,
             version: int | None = None) -> AdaptationResponse:
    """The public description of an adaptation's ``version`` (not its source paths)."""
    info = model.info
    update = info.get("update")
    parent = update.get("parent") if isinstance(update, dict) else None
    reject = None if model.reject is None else RejectInfo(**model.reject.to_dict())
    return AdaptationResponse(
        id=adaptation_id, kind=model.kind, labels=list(model.label_names),
        algorithm=info.get("algorithm"), examples=info.get("support_size"),
        steps=info.get("steps"), temperature=model.temperature,
        seconds=None if seconds is None else round(seconds, 4), reject=reject,
        version=version, parent=parent if isinstance(parent, int) else None)


def _restrict(raw: dict[str, Any], candidates: list[str] | None) -> Prediction:
    """``raw`` (:data:`metafit.deploy.adapted.Prediction`) as a :class:`Prediction`,
    predicted among ``candidates`` only (their probabilities renormalised) when given; a
    rejected input keeps the unknown label (its score is over all the classes)."""
    probs = {str(k): float(v) for k, v in raw["probabilities"].items()}
    flags = {"score": raw.get("score"), "rejected": raw.get("rejected")}
    if candidates is None:
        return Prediction(label=str(raw["label"]), probabilities=probs, **flags)
    kept = {k: probs[k] for k in candidates}
    total = math.fsum(kept.values())
    if total > 0:
        kept = {k: v / total for k, v in kept.items()}
    label = str(raw["label"]) if raw.get("rejected") else max(kept, key=lambda k: kept[k])
    return Prediction(label=label, probabilities=kept, **flags)
