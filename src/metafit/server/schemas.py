"""Request and response bodies of the HTTP API (pydantic: they are the OpenAPI schema).

Text runs take sentences, image runs take base64-encoded PNG or JPEG files in JSON, or
the files themselves as ``multipart/form-data`` (:class:`AdaptationUpload`,
:class:`PredictUpload`: they describe the forms, which :mod:`metafit.server.forms` reads). Unknown
fields are refused (422), so a misspelt ``lable`` is an error, not an ignored key.
"""

from __future__ import annotations

from typing import Annotated, Any, Self, TypeVar, cast

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from metafit.deploy.reject import DEFAULT_RECALL, DEFAULT_REJECT_SCORE, DEFAULT_UNKNOWN_LABEL
from metafit.evaluation.openset import RejectScore

__all__ = ["TextExample", "ImageExample", "ImageInput", "RejectOptions", "RejectInfo",
           "AdaptationRequest", "ExamplesRequest", "ExamplesUpload", "RollbackRequest",
           "VersionDescription", "VersionsResponse",
           "AdaptationUpload", "AdaptationResponse", "PredictRequest", "PredictUpload",
           "Prediction", "PredictResponse", "Health", "Label", "ErrorItem", "ErrorBody"]

Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Text = Annotated[str, StringConstraints(min_length=1)]
Base64 = Annotated[str, StringConstraints(min_length=1)]
File = Annotated[bytes, Field(description="a PNG or JPEG file")]
T = TypeVar("T")
#: The description of an adaptation's ``calibrate`` option.
CALIBRATE = ("fit a temperature T for the probabilities, softmax(logits / T), on held-out "
             "folds of the support set (as `metafit adapt --calibrate`; one extra "
             "adaptation per fold, at most 10); labels do not change")
# A list of at least one item (on each member of a union of lists, so that the schema
# says minItems: a constraint on the union itself came out as a string's minLength).
NonEmpty = Annotated[list[T], Field(min_length=1)]


#: A 1x1 white PNG: the schema's example of an image (any PNG is resized to the model's).
PNG_EXAMPLE = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAsTj2FAAAAABJ"
               "RU5ErkJggg==")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextExample(_Body):
    """One labelled sentence of a support set."""

    text: Text = Field(description="the example sentence (not empty)")
    label: Label = Field(description="its class name (a non-empty string)")


class ImageExample(_Body):
    """One labelled image of a support set."""

    image: Base64 = Field(description="a PNG or JPEG file, base64-encoded",
                          examples=[PNG_EXAMPLE])
    label: Label = Field(description="its class name (a non-empty string)")


class ImageInput(_Body):
    """One image to classify."""

    image: Base64 = Field(description="a PNG or JPEG file, base64-encoded",
                          examples=[PNG_EXAMPLE])


class RejectOptions(_Body):
    """"None of these": label inputs whose reject score is below a threshold as unknown.
    The threshold keeps ``recall`` of held-out support examples (costs up to 10 extra
    adaptations; needs a class with two examples), or is given."""

    score: RejectScore = Field(default=cast(RejectScore, DEFAULT_REJECT_SCORE),
                               description="the reject score")
    recall: float | None = Field(default=None, gt=0, le=1, description="target in-scope "
                                 f"recall of the fitted threshold (default {DEFAULT_RECALL})")
    threshold: float | None = Field(default=None, allow_inf_nan=False,
                                    description="a given threshold instead of a fitted one")
    label: Label = Field(default=DEFAULT_UNKNOWN_LABEL, description="the unknown label (not "
                         "a class name)")

    @model_validator(mode="after")
    def _one_threshold(self) -> Self:
        if self.recall is not None and self.threshold is not None:
            raise ValueError("give recall or threshold, not both")
        return self


class AdaptationRequest(_Body):
    """A support set: at least one example of each of two or more classes."""

    examples: NonEmpty[TextExample] | NonEmpty[ImageExample] = Field(
        description="labelled examples, all text or all images")
    steps: StrictInt | None = Field(default=None, ge=0,
                              description="inner steps (default: the server's)")
    calibrate: StrictBool = Field(default=False, description=CALIBRATE)
    reject: RejectOptions | None = Field(default=None, description="a 'none of these' "
                                         "setting (default: none)")


class AdaptationUpload(_Body):
    """A support set of images as ``multipart/form-data``: the i-th ``label`` part names
    the class of the i-th ``file`` part (``curl -F label=cat -F file=@cat1.png ...``)."""

    label: NonEmpty[Label] = Field(description="one class name per file, in the same order")
    file: NonEmpty[File] = Field(description="the images: PNG or JPEG files")
    steps: int | SkipJsonSchema[None] = Field(
        default=None, ge=0, description="inner steps (default: the server's)")
    calibrate: bool = Field(default=False, description=CALIBRATE + " ('true' or 'false')")
    reject: str | SkipJsonSchema[None] = Field(
        default=None, description="a 'none of these' setting: RejectOptions as JSON text "
        "(-F 'reject={\"score\": \"max_logit\"}')")


class ExamplesRequest(_Body):
    """Labelled examples to add to an adaptation (of its classes or new ones): the server
    adapts again on its support set plus these into a new version, with the same
    calibration and "none of these" setting refitted."""

    examples: NonEmpty[TextExample] | NonEmpty[ImageExample] = Field(
        description="labelled examples, all text or all images")
    steps: StrictInt | None = Field(default=None, ge=0,
                              description="inner steps (default: those of the current "
                              "version)")


class ExamplesUpload(_Body):
    """Labelled images to add to an adaptation, as ``multipart/form-data``: the i-th
    ``label`` part names the class of the i-th ``file`` part."""

    label: NonEmpty[Label] = Field(description="one class name per file, in the same order")
    file: NonEmpty[File] = Field(description="the images: PNG or JPEG files")
    steps: int | SkipJsonSchema[None] = Field(
        default=None, ge=0, description="inner steps (default: those of the current "
        "version)")


class RollbackRequest(_Body):
    """The version of an adaptation to serve from now on (an earlier one: a rollback)."""

    version: StrictInt = Field(ge=1, le=9999, description="a version number listed by GET "
                               "/v1/adaptations/{id}/versions")


class RejectInfo(BaseModel):
    """The reject setting of an adaptation."""

    score: str
    threshold: float | None = Field(description="inputs scoring below it get `label` (null: "
                                    "none fitted, nothing rejected)")
    recall: float | None = Field(description="the target recall it was fitted for (null: "
                                 "given)")
    label: str = Field(description="the unknown label")
    fitted: dict[str, Any] = Field(description="how it was fitted (held-out folds, counts, "
                                   "held-out recall) or why not")


class AdaptationResponse(BaseModel):
    """An adaptation kept on the server: predict with ``POST /v1/adaptations/{id}/predict``."""

    id: str = Field(description="the adaptation id (32 hex digits)")
    kind: str = Field(description="'text' or 'image'")
    labels: list[str] = Field(description="the class names the model predicts")
    algorithm: str | None = Field(default=None, description="the run's algorithm")
    examples: int | None = Field(default=None, description="support examples it was adapted on")
    steps: int | None = Field(default=None, description="inner steps it took")
    temperature: float | None = Field(
        default=None, description="T of its probabilities, softmax(logits / T): 1 unless "
        "adapted with calibrate (which keeps 1 when no class has two examples)")
    seconds: float | None = Field(default=None, description="time the adaptation took (in "
                                  "the response to POST only)")
    reject: RejectInfo | None = Field(default=None, description="its 'none of these' "
                                      "setting, if any")
    version: int | None = Field(default=None, description="the version described (1: as "
                                "first adapted; each POST of examples adds one)")
    parent: int | None = Field(default=None, description="the version it was updated from "
                               "(null: the first)")


class VersionDescription(BaseModel):
    """One version of an adaptation."""

    version: int
    created: str = Field(description="when it was written (ISO 8601, UTC)")
    labels: list[str] = Field(description="the class names it predicts")
    examples: int | None = Field(description="support examples it was adapted on")
    parent: int | None = Field(description="the version it was updated from (null: the "
                               "first)")
    added: int | None = Field(description="examples the update added (null: the first)")
    current: bool = Field(description="whether it is the version served")


class VersionsResponse(BaseModel):
    """Every version of an adaptation, oldest first."""

    id: str
    current: int = Field(description="the version served")
    versions: list[VersionDescription]


class PredictRequest(_Body):
    """Inputs to classify, optionally restricted to some of the model's labels."""

    inputs: NonEmpty[Text] | NonEmpty[ImageInput] = Field(
        description="sentences, or images as {'image': base64}")
    labels: list[Label] | None = Field(
        default=None, min_length=1,
        description="candidate labels: predict only among these (probabilities renormalised "
        "over them); a label the model does not know is a 422")


class PredictUpload(_Body):
    """Images to classify as ``multipart/form-data``: ``file`` parts, optionally
    ``labels`` parts restricting the prediction to some of the model's labels."""

    file: NonEmpty[File] = Field(description="the images: PNG or JPEG files")
    labels: list[Label] | SkipJsonSchema[None] = Field(
        default=None, min_length=1,
        description="candidate labels, one per part (as PredictRequest's labels)")


class Prediction(BaseModel):
    """The predicted label of one input and the probability of every label; with a reject
    setting, its reject score and whether it was rejected (then ``label`` is the unknown
    label)."""

    label: str
    probabilities: dict[str, float]
    score: float | None = Field(default=None, description="the reject score (higher: more "
                                "like the classes; null without a reject setting)")
    rejected: bool | None = Field(default=None, description="whether the score is below the "
                                  "threshold (null without a reject setting)")


class PredictResponse(BaseModel):
    """One prediction per input, in order."""

    predictions: list[Prediction]
    version: int | None = Field(default=None, description="the version of the adaptation "
                                "(or of the served model directory) that answered")


class Health(BaseModel):
    """What the server serves."""

    status: str
    kind: str = Field(description="'text' or 'image'")
    mode: str = Field(description="'run' (adapts and predicts) or 'model' (predicts only)")
    version: str



class ErrorItem(BaseModel):
    """Where and why a body is malformed (the offending value is not echoed back)."""

    loc: list[str | int] = Field(description="where: 'body', then field names and indices")
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error response: a message, or for a malformed body a list of problems."""

    detail: str | list[ErrorItem]
