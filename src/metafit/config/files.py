"""Reading the YAML files metafit is handed (recipes, a run's ``config.yaml``, a model
directory's ``recipe.yaml``) as untrusted input: bounded in size, decoded as UTF-8,
parsed with ``yaml.safe_load`` (no objects built), and every problem reported in one line
naming the file, and the line where there is one."""

from __future__ import annotations

import os
import reprlib
from typing import Any

import yaml

__all__ = ["RecipeError", "MAX_RECIPE_BYTES", "MAX_RECIPE_VALUES", "parse_yaml_mapping",
           "read_yaml_mapping", "short_repr"]


class RecipeError(ValueError):
    """A recipe that cannot be found, parsed or validated; the message says why."""


#: The largest recipe file read: recipes are a few hundred bytes, and one read from a run
#: or model directory is untrusted input (docs/design.md, "Security stance").
MAX_RECIPE_BYTES = 1 << 20
#: Most values a recipe may hold with its YAML aliases expanded (a shipped one: about 100).
MAX_RECIPE_VALUES = 100_000

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 2


def short_repr(value: object) -> str:
    """A bounded repr of a value read from a file, for an error message (a YAML alias
    can make a value whose full repr is exponentially long)."""
    return _REPR.repr(value)


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    """One line saying where and what the YAML problem is (PyYAML's own message spans
    several lines and quotes the file)."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        what = e.problem or e.context or "invalid YAML"
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        return f"{where}{what}"
    if isinstance(e, yaml.reader.ReaderError):
        line = text[: e.position].count("\n") + 1
        return f"line {line}: unacceptable character #x{e.character:04x} ({e.reason})"
    return " ".join(str(e).split())


def _expanded_size(value: Any, seen: dict[int, int]) -> int:
    """Values (mappings, lists, scalars, keys) ``value`` holds as a tree, counted on the
    graph YAML aliases make (each shared node once, by ``id``), so that ten levels of
    ten aliases each count as 10^10 without being expanded."""
    known = seen.get(id(value))
    if known is not None:
        return known
    if isinstance(value, dict):
        size = 1 + sum(_expanded_size(k, seen) + _expanded_size(v, seen)
                       for k, v in value.items())
    elif isinstance(value, list):
        size = 1 + sum(_expanded_size(v, seen) for v in value)
    else:
        size = 1
    seen[id(value)] = size
    return size


def parse_yaml_mapping(data: bytes | str, where: str | os.PathLike[str], what: str = "recipe"
                       ) -> dict[str, Any]:
    """Decode (UTF-8) and parse YAML ``data`` that must be a mapping (an empty document:
    ``{}``); ``where`` names its file in errors and ``what`` says what it is.

    Raises:
        RecipeError: more than :data:`MAX_RECIPE_BYTES`, bytes that are not UTF-8, invalid
            or too deeply nested YAML, or a document that is not a mapping; one line,
            naming ``where``.
    """
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{what} {where} is larger than {MAX_RECIPE_BYTES} bytes; "
                          f"a {what} is a short YAML mapping of key: value")
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise RecipeError(f"{what} {where}, line {line}: not valid UTF-8 (byte "
                              f"{data[e.start]:#04x} at offset {e.start}); a {what} is a "
                              "UTF-8 text file") from None
    else:
        text = data
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{what} {where} is not valid YAML: {_yaml_problem(e, text)}"
                          ) from None
    except RecursionError:
        raise RecipeError(f"{what} {where} is not a valid {what}: YAML nested too deeply"
                          ) from None
    if raw is None:
        return {}
    try:
        size = _expanded_size(raw, {})
    except RecursionError:
        raise RecipeError(f"{what} {where} is not a valid {what}: YAML nested too deeply"
                          ) from None
    if size > MAX_RECIPE_VALUES:
        raise RecipeError(f"{what} {where} holds {size:,} values once its YAML aliases (*name) "
                          f"are expanded, over the limit of {MAX_RECIPE_VALUES:,} (an alias "
                          "bomb?)")
    if not isinstance(raw, dict):
        raise RecipeError(f"{what} {where} must be a mapping of key: value, not a "
                          f"{type(raw).__name__}")
    return raw


def read_yaml_mapping(path: str | os.PathLike[str], what: str = "recipe",
                      where: str | None = None) -> dict[str, Any]:
    """Read the YAML mapping in the file ``path`` (see :func:`parse_yaml_mapping`);
    ``where`` names it in errors (default: ``path``).

    Raises:
        RecipeError: a file that cannot be read, or any error of
            :func:`parse_yaml_mapping`, naming the file.
    """
    name = str(path) if where is None else where
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as e:
        raise RecipeError(f"cannot read {what} {name}: {e.strerror or e}") from None
    return parse_yaml_mapping(data, name, what)
