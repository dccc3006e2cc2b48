"""Reading a request's JSON body off the event loop, its list sizes checked first.

FastAPI would parse and validate a body in the event loop, where a large body of many tiny
inputs holds up every other request (``/healthz`` too). Here the endpoint takes
the raw bytes (already bounded by :class:`~metafit.server.guards.BodyLimitMiddleware`),
and :func:`parse_body` runs in a worker thread. It reads the top-level object member by
member and a bounded list (``examples``, ``inputs``, ``labels``) item by item, refusing
it as soon as it passes the server's limit: the rest of the body is never parsed, no
pydantic model is built for it, and since each item is a separate call into the C JSON
scanner, the event loop gets the GIL between items (``json.loads`` of a whole large body
would hold it throughout). Only then does pydantic validate. The OpenAPI schema still
describes the body (:func:`json_body`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Set
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from metafit.server.errors import ApiError

__all__ = ["parse_body", "json_body", "too_many", "validation_errors"]

M = TypeVar("M", bound=BaseModel)

_NOUNS = {"examples": "support examples", "inputs": "inputs", "labels": "labels"}
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")  # JSON's whitespace (as json.decoder.WHITESPACE)


def too_many(name: str, count: int | str, limit: int) -> str:
    """The 422 message for ``count`` items in list ``name`` over ``limit``."""
    per = " per request" if name != "examples" else ""
    return f"{count} {_NOUNS.get(name, name)}: the server accepts at most {limit}{per}"


def is_json(content_type: str) -> bool:
    """Whether a ``Content-Type`` header declares JSON (``application/json``, ``+json``)."""
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


def parse_body(raw: bytes, content_type: str, model: type[M],
               limits: Mapping[str, int]) -> M:
    """``raw`` as a validated ``model``; blocking (run it in a thread).

    ``limits``: the most items each named top-level list may hold.

    Raises:
        ApiError: 415, not declared as JSON; 422, not JSON (``json_invalid``), a bounded
            list over its limit (checked before validation), or invalid for ``model``
            (the pydantic errors, without the offending values).
    """
    if not is_json(content_type):
        raise ApiError(415, "the request body must be JSON, sent with 'Content-Type: "
                       "application/json' (image files: multipart/form-data)")
    allowed = None
    if model.model_config.get("extra") == "forbid":  # refuse an unknown key before its value
        allowed = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
    data = load_object(raw, limits, allowed)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, validation_errors(e.errors(include_url=False))) from None
    except RecursionError:
        raise _invalid("JSON nested too deeply") from None


def _invalid(msg: str, pos: int | None = None) -> ApiError:
    loc: list[str | int] = ["body"] if pos is None else ["body", pos]
    return ApiError(422, [{"loc": loc, "msg": msg, "type": "json_invalid"}])


def load_object(raw: bytes, limits: Mapping[str, int],
                allowed: Set[str] | None = None) -> Any:
    """``raw`` decoded as JSON; a top-level object member by member, each list named in
    ``limits`` item by item, refused once it holds more items than its limit; a key not
    in ``allowed`` (None: any) refused before its value is decoded.

    Returns:
        What ``json.loads`` would (the last of duplicate keys wins); a body that is not an
        object is decoded whole only when it is small (pydantic refuses it anyway).

    Raises:
        ApiError: 422, not JSON (``json_invalid``, with the position), nested too deeply,
            a bounded list over its limit.
    """
    try:
        text = raw.decode(json.detect_encoding(raw))
    except (UnicodeDecodeError, LookupError):
        raise _invalid("JSON decode error: not UTF-8 text") from None
    try:
        return _object(text, limits, allowed)
    except json.JSONDecodeError as e:
        raise _invalid(f"JSON decode error: {e.msg}", e.pos) from None
    except RecursionError:
        raise _invalid("JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise _invalid(f"JSON decode error: {str(e)[:200]}") from None


def _object(s: str, limits: Mapping[str, int], allowed: Set[str] | None) -> Any:
    i = _skip(s, 0)
    if not s.startswith("{", i):
        if len(s) > 1000:  # a long non-object: invalid whatever it holds, do not parse it
            return None
        return json.loads(s)
    out: dict[str, Any] = {}
    i = _skip(s, i + 1)
    if s.startswith("}", i):
        return _end(s, i + 1, out)
    while True:
        if not s.startswith('"', i):
            raise json.JSONDecodeError("Expecting property name enclosed in double quotes",
                                       s, i)
        key, i = _DECODER.raw_decode(s, i)
        i = _skip(s, i)
        if not s.startswith(":", i):
            raise json.JSONDecodeError("Expecting ':' delimiter", s, i)
        i = _skip(s, i + 1)
        if allowed is not None and key not in allowed:
            raise ApiError(422, [{"loc": ["body", str(key)[:100]], "type": "extra_forbidden",
                                  "msg": "Extra inputs are not permitted"}])
        if key in limits and s.startswith("[", i):
            out[key], i = _list(s, i, key, limits[key])
        else:
            out[key], i = _DECODER.raw_decode(s, i)
        i = _skip(s, i)
        if s.startswith("}", i):
            return _end(s, i + 1, out)
        if not s.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)
        i = _skip(s, i + 1)


def _list(s: str, i: int, name: str, limit: int) -> tuple[list[Any], int]:
    """The JSON array at ``s[i] == "["``, item by item, and the index after it."""
    items: list[Any] = []
    i = _skip(s, i + 1)
    if s.startswith("]", i):
        return items, i + 1
    while True:
        item, i = _DECODER.raw_decode(s, i)
        items.append(item)
        if len(items) > limit:
            raise ApiError(422, too_many(name, f"more than {limit}", limit))
        i = _skip(s, i)
        if s.startswith("]", i):
            return items, i + 1
        if not s.startswith(",", i):
            raise json.JSONDecodeError("Expecting ',' delimiter", s, i)
        i = _skip(s, i + 1)


def _skip(s: str, i: int) -> int:
    """The index of the first non-whitespace character of ``s`` from ``i``."""
    space = _SPACE.match(s, i)
    assert space is not None  # the pattern matches the empty string
    return space.end()


def _end(s: str, i: int, out: dict[str, Any]) -> dict[str, Any]:
    if _skip(s, i) != len(s):
        raise json.JSONDecodeError("Extra data", s, i)
    return out


def validation_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic errors as ``[{"loc": ["body", ...], "msg", "type"}]``: where and why,
    never the offending value (it can be megabytes of base64)."""
    return [{"loc": ["body", *e.get("loc", ())], "msg": str(e.get("msg", "")),
             "type": str(e.get("type", ""))} for e in errors]


def json_body(model: type[BaseModel], form: type[BaseModel] | None = None
              ) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` (a component schema) as the required JSON
    body of a route that reads its body itself; and ``form``, if given, as the same
    route's ``multipart/form-data`` body (its ``file`` parts: PNG or JPEG files)."""
    content: dict[str, Any] = {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}
    if form is not None:
        content["multipart/form-data"] = {
            "schema": {"$ref": f"#/components/schemas/{form.__name__}"},
            "encoding": {"file": {"contentType": "image/png, image/jpeg"}}}
    return {"requestBody": {"required": True, "content": content}}
