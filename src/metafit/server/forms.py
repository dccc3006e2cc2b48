"""Reading a ``multipart/form-data`` body (uploaded image files) off the event loop, its
parts counted while it is parsed.

The JSON bodies carry images as base64 (:mod:`metafit.server.bodies`); a browser or
``curl -F`` sends files as they are, as parts of a form. The body is already bounded and
buffered by :class:`~metafit.server.guards.BodyLimitMiddleware`; :func:`parse_form` runs
python-multipart's streaming parser over it in a worker thread and counts each field's
parts as their headers arrive, refusing the body as soon as one field passes its limit
(the rest is never parsed). Unknown fields are refused like unknown JSON keys. The image
files are returned as bytes: their pixel caps are checked from their headers next
(:func:`metafit.server.limits.check_images`), before anything is decoded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field, TypeAdapter, ValidationError
from python_multipart.multipart import MultipartParser, parse_options_header

from metafit.server.bodies import too_many
from metafit.server.errors import ApiError
from metafit.server.schemas import Label

__all__ = ["FormSpec", "Upload", "is_multipart", "parse_form", "FILE", "FILE_TYPES"]

#: The name of the form's file parts.
FILE = "file"
#: Longest multipart boundary accepted (RFC 2046 allows 70 characters; python-multipart 256).
MAX_BOUNDARY = 200
#: The media types a file part may declare (or none): the image formats the server reads,
#: and the type of a file whose type the client does not know.
FILE_TYPES = frozenset({"image/png", "image/jpeg", "application/octet-stream"})

_LABELS = TypeAdapter(list[Label])
_STEPS = TypeAdapter(Annotated[int, Field(ge=0)])
#: The optional single-valued fields a form may hold (:class:`FormSpec` says which).
_OPTIONS = ("steps", "calibrate", "reject")
#: The texts a boolean field may hold (strict, as JSON's ``true`` and ``false``).
_BOOLEANS = {"true": True, "false": False}
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]{0,62}/[\w.+-]{1,63}")


@dataclass(frozen=True)
class FormSpec:
    """The parts one route's form may hold.

    Attributes:
        files: most ``file`` parts (over it: 422 while parsing).
        noun: what the files are, for messages (``examples``, ``inputs``).
        label_field: the text field of labels (``label``: one per file, in order;
            ``labels``: candidate labels of a prediction).
        labels: most ``label_field`` parts.
        paired: whether each file needs its own label (a support set).
        steps: whether ``steps`` and ``reject`` fields are accepted (a support set).
        calibrate: whether a ``calibrate`` field (``true`` or ``false``) is accepted.
    """

    files: int
    noun: str
    label_field: str
    labels: int
    paired: bool
    steps: bool = False
    calibrate: bool = False


@dataclass(frozen=True)
class Upload:
    """A parsed form: the files' bytes in order, the labels (one per file for a support
    set; a prediction's candidates, possibly none), ``steps`` if given, ``calibrate``
    (false unless given as ``true``), and ``reject`` (a support set's "none of these"
    options as JSON text, checked by the service)."""

    files: list[bytes]
    labels: list[str] = field(default_factory=list)
    steps: int | None = None
    calibrate: bool = False
    reject: str | None = None


def is_multipart(content_type: str) -> bool:
    """Whether a ``Content-Type`` header declares ``multipart/form-data``."""
    return content_type.split(";")[0].strip().lower() == "multipart/form-data"


def _error(loc: list[str | int], msg: str, kind: str) -> ApiError:
    """A 422 in the shape of a malformed JSON body's: ``[{"loc", "msg", "type"}]``."""
    return ApiError(422, [{"loc": ["body", *loc], "msg": msg, "type": kind}])


def parse_form(raw: bytes, content_type: str, spec: FormSpec) -> Upload:
    """``raw`` (sent as ``content_type``, ``multipart/form-data; boundary=...``) as an
    :class:`Upload` of the fields ``spec`` allows; blocking (run it in a thread).

    Raises:
        ApiError: 415, a file part declaring a type other than :data:`FILE_TYPES`
            (naming the part, ``file[2]``); 422, no boundary, malformed multipart
            (``multipart_invalid``), an unknown or repeated field, a field over its
            count, text that is not UTF-8, an invalid label, ``steps`` or ``calibrate``
            (only ``true`` and ``false`` are booleans), a missing
            field, or (``spec.paired``) not one label per file.
    """
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise _error([], "multipart/form-data without a boundary", "multipart_invalid")
    if len(boundary) > MAX_BOUNDARY:
        raise _error([], f"multipart boundary over {MAX_BOUNDARY} characters",
                     "multipart_invalid")
    parts = _Parts(spec)
    try:
        parser = MultipartParser(boundary, parts.callbacks())
        parser.write(raw)
        parser.finalize()
    except ApiError:
        raise
    except Exception as e:  # python-multipart's parse errors, whatever their class
        raise _error([], f"malformed multipart body ({type(e).__name__})",
                     "multipart_invalid") from None
    if not parts.ended:
        raise _error([], "malformed multipart body (no closing boundary)",
                     "multipart_invalid")
    return parts.upload()


class _Parts:
    """python-multipart's callbacks: each part's headers, then its bytes, kept by field."""

    def __init__(self, spec: FormSpec) -> None:
        self.spec = spec
        self.fields: dict[str, list[bytes]] = {FILE: [], spec.label_field: []}
        if spec.steps:
            self.fields["steps"] = []
            self.fields["reject"] = []
        if spec.calibrate:
            self.fields["calibrate"] = []
        self.limits = {FILE: spec.files, spec.label_field: spec.labels,
                       **dict.fromkeys(_OPTIONS, 1)}
        self.ended = False
        self._header: list[bytes] = [b"", b""]
        self._headers: dict[bytes, bytes] = {}
        self._chunks: list[bytes] = []
        self._name = ""

    def callbacks(self) -> Any:
        return {"on_part_begin": self._begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._data,
                "on_part_end": self._part_end, "on_end": self._end}

    def _begin(self) -> None:
        self._headers = {}
        self._chunks = []

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header[0].strip().lower()] = self._header[1].strip()
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        """Name the part and count it (refusing it now, before its bytes are read)."""
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        if name is None:
            raise _error([], "a part without a name (Content-Disposition: form-data; "
                         "name=...)", "multipart_invalid")
        self._name = name.decode("utf-8", "replace")
        if self._name not in self.fields:
            shown = self._name if len(self._name) <= 40 else self._name[:40] + "..."
            raise _error([shown], f"Extra inputs are not permitted (the fields are "
                         f"{', '.join(self.fields)})", "extra_forbidden")
        count = len(self.fields[self._name]) + 1
        limit = self.limits[self._name]
        if count > limit:
            if self._name in _OPTIONS:
                raise _error([self._name], "given more than once", "value_error")
            noun = self.spec.noun if self._name == FILE else "labels"
            raise ApiError(422, f"{self._name}: {too_many(noun, f'more than {limit}', limit)}")
        if self._name == FILE:
            self._check_type(count - 1)

    def _check_type(self, index: int) -> None:
        declared = self._headers.get(b"content-type")
        if declared is None:
            return
        media = parse_options_header(declared)[0].decode("latin-1").lower()
        if media not in FILE_TYPES:
            shown = media if _MEDIA_TYPE.fullmatch(media) else "another type"
            raise ApiError(415, f"{FILE}[{index}]: {shown} is not accepted: send PNG or JPEG "
                           "images (image/png, image/jpeg)")

    def _data(self, data: bytes, start: int, end: int) -> None:
        self._chunks.append(data[start:end])

    def _part_end(self) -> None:
        self.fields[self._name].append(b"".join(self._chunks))
        self._chunks = []

    def _end(self) -> None:
        self.ended = True

    def upload(self) -> Upload:
        """The parts as an :class:`Upload`, their text checked."""
        spec = self.spec
        files = self.fields[FILE]
        if not files:
            raise _error([FILE], "Field required", "missing")
        labels = self._labels(spec.label_field)
        if spec.paired and len(labels) != len(files):
            raise _error([spec.label_field], f"{len(labels)} labels for {len(files)} files: "
                         "give one label per file, in the same order", "value_error")
        steps = None
        if self.fields.get("steps"):
            text = self._text("steps", 0)
            if not (text.isascii() and text.isdigit()):  # not " 3", "3.0", "1_0", "+3"
                raise _error(["steps"], "Input should be a whole number of steps, digits only",
                             "int_parsing")
            try:
                steps = _STEPS.validate_python(text)
            except ValidationError as e:
                raise _error(["steps"], e.errors()[0]["msg"], e.errors()[0]["type"]) from None
        calibrate = False
        if self.fields.get("calibrate"):
            text = self._text("calibrate", 0)
            if text not in _BOOLEANS:
                raise _error(["calibrate"], "Input should be 'true' or 'false'",
                             "bool_parsing")
            calibrate = _BOOLEANS[text]
        reject = self._text("reject", 0) if self.fields.get("reject") else None
        return Upload(files=files, labels=labels, steps=steps, calibrate=calibrate,
                      reject=reject)

    def _labels(self, name: str) -> list[str]:
        texts = [self._text(name, i) for i in range(len(self.fields[name]))]
        try:
            return _LABELS.validate_python(texts)
        except ValidationError as e:
            raise ApiError(422, [{"loc": ["body", name, *err["loc"]], "msg": err["msg"],
                                  "type": err["type"]} for err in e.errors()]) from None

    def _text(self, name: str, index: int) -> str:
        try:
            return self.fields[name][index].decode("utf-8")
        except UnicodeDecodeError:
            raise _error([name, index], "not UTF-8 text", "string_unicode") from None
