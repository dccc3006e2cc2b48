"""Labelled rows from Arrow data (a Parquet file, or the Arrow files of a ``datasets``
directory): pyarrow imported with a clear error where the ``data`` extra is missing, the
column types checked, the cells turned into :class:`~metafit.data.rows.Rows`.

An input column holds strings (texts or image paths), binary (encoded images) or Hugging
Face images (``struct<bytes: binary, path: string>``). A label column holds strings,
integers, or a dictionary (categorical) of either; where the table's Hugging Face
features name a ``ClassLabel``'s classes (``names``), an integer label is that class name.

pyarrow is required at version 15 or later: older versions could unpickle a Python
extension type declared in a file (CVE-2023-47248); from 14.0.1 on they do not.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

from metafit.data.errors import DatasetError
from metafit.data.jsonl_rows import label_text
from metafit.data.rows import MAX_TABLE_BYTES, Problems, Rows

__all__ = ["MIN_PYARROW", "check_columns", "class_names", "import_pyarrow", "schema_features",
           "table_rows"]

MIN_PYARROW = (15, 0)
_EXTRA = "pip install 'metafit[data]' -c constraints.txt"


def import_pyarrow(what: str) -> ModuleType:
    """The ``pyarrow`` module, checked to be recent enough to read untrusted files.

    Raises:
        DatasetError: pyarrow is missing or older than :data:`MIN_PYARROW` (naming ``what``
            needed it and the extra that installs it).
    """
    try:
        import pyarrow
    except ImportError:
        raise DatasetError(f"reading {what} needs pyarrow (the data extra: {_EXTRA})"
                           ) from None
    version = tuple(int(p) for p in pyarrow.__version__.split(".")[:2] if p.isdigit())
    if version < MIN_PYARROW:
        raise DatasetError(f"reading {what} needs pyarrow >= 15 (found "
                           f"{pyarrow.__version__}, which may unpickle data from a file: "
                           f"CVE-2023-47248); upgrade it: {_EXTRA}")
    return pyarrow


def class_names(features: Any, column: str) -> list[str] | None:
    """The class names of ``column`` where Hugging Face ``features`` (a dataset's
    ``features`` mapping, as JSON) declare it a ``ClassLabel`` with ``names``; else None."""
    if not isinstance(features, dict):
        return None
    spec = features.get(column)
    if not isinstance(spec, dict) or spec.get("_type") != "ClassLabel":
        return None
    names = spec.get("names")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return [n.strip() for n in names]
    return None


def schema_features(schema: Any) -> Any:
    """The Hugging Face ``features`` stored in an Arrow schema's metadata (what
    ``datasets`` writes into its Arrow and Parquet files), or None."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw is None:
        return None
    try:
        info = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    inner = info.get("info") if isinstance(info, dict) else None
    return inner.get("features") if isinstance(inner, dict) else None


def _no(kind: Any) -> bool:
    """The test of a type this pyarrow does not have (``string_view`` before 16)."""
    return False


def _input_kind(pa: ModuleType, kind: Any) -> str | None:
    """``"string"``, ``"binary"``, ``"image"`` (a Hugging Face image struct) or None; a
    dictionary-encoded column is of its values' kind."""
    types = pa.types
    if types.is_dictionary(kind):
        inner = _input_kind(pa, kind.value_type)
        return inner if inner in ("string", "binary") else None
    if any(getattr(types, f"is_{name}", _no)(kind)
           for name in ("string", "large_string", "string_view")):
        return "string"
    if any(getattr(types, f"is_{name}", _no)(kind)
           for name in ("binary", "large_binary", "binary_view")):
        return "binary"
    if types.is_struct(kind) and {kind.field(i).name for i in range(kind.num_fields)} \
            >= {"bytes", "path"}:
        return "image"
    return None


def _label_ok(pa: ModuleType, kind: Any) -> bool:
    types = pa.types
    if types.is_dictionary(kind):
        return _label_ok(pa, kind.value_type)
    return bool(types.is_integer(kind) or _input_kind(pa, kind) == "string")


def check_columns(pa: ModuleType, path: Path, schema: Any, input_column: str,
                  label_column: str) -> None:
    """Refuse a ``schema`` without both columns, or with columns of the wrong types.

    Raises:
        DatasetError: naming ``path``, the column and its type (or the columns there are).
    """
    names = list(schema.names)
    missing = [c for c in (input_column, label_column) if c not in names]
    if missing:
        raise DatasetError(f"{path}: column(s) {missing} not found; the table has columns "
                           f"{names}")
    kind = schema.field(input_column).type
    if _input_kind(pa, kind) is None:
        raise DatasetError(f"{path}: column {input_column!r} has type {kind}; an input column "
                           "holds strings (texts, image paths), binary (encoded images) or "
                           "Hugging Face images")
    kind = schema.field(label_column).type
    if not _label_ok(pa, kind):
        raise DatasetError(f"{path}: column {label_column!r} has type {kind}; a label column "
                           "holds strings or integers")


#: Values of a column converted to Python objects at a time (:func:`bounded_values`).
SLICE = 256


def _value_bytes(value: Any) -> int:
    """Bytes a converted cell holds: a string's or bytes' length, an image struct's parts."""
    if isinstance(value, str | bytes):
        return len(value)
    if isinstance(value, dict):
        return sum(_value_bytes(v) for v in value.values())
    return 8


def bounded_values(column: Any, path: Path, name: str, budget: int) -> tuple[list[Any], int]:
    """``column.to_pylist()`` (a pyarrow ChunkedArray), converted :data:`SLICE` values at a
    time and refused as soon as the Python values exceed ``budget`` bytes: a dictionary-
    encoded or view column can hold far more than the file's size or the table's
    ``nbytes`` say. Returns the values and the budget left.

    Raises:
        DatasetError: over ``budget`` (naming the file and the column).
    """
    values: list[Any] = []
    for chunk in column.chunks:
        for start in range(0, len(chunk), SLICE):
            part = chunk.slice(start, SLICE).to_pylist()
            budget -= sum(_value_bytes(v) for v in part)
            if budget < 0:
                raise DatasetError(f"{path}: column {name!r} holds more than the limit on a "
                                   "table's size in memory once read (a dictionary-encoded "
                                   "or view column repeating large values)")
            values += part
    return values, budget


def table_rows(pa: ModuleType, path: Path, table: Any, input_column: str, label_column: str,
               names: list[str] | None = None, max_bytes: int = MAX_TABLE_BYTES) -> Rows:
    """The rows of the Arrow ``table`` read from ``path`` (rows counted from 0).

    ``names``: the label column's class names (an integer label ``i`` is ``names[i]``);
    default: those of the table's own Hugging Face features, if any. ``max_bytes``: the
    most the two columns may take as Python values (:func:`bounded_values`).

    Raises:
        DatasetError: a missing column, a column of the wrong type, null inputs, null or
            empty labels, an integer label outside ``names``, no rows: naming the file and
            every faulty row.
    """
    check_columns(pa, path, table.schema, input_column, label_column)
    if names is None:
        names = class_names(schema_features(table.schema), label_column)
    inputs, budget = bounded_values(table.column(input_column), path, input_column, max_bytes)
    raw_labels, _ = bounded_values(table.column(label_column), path, label_column, budget)
    problems = Problems(path, "row")
    labels: list[str] = []
    for row, (cell, value) in enumerate(zip(inputs, raw_labels, strict=True)):
        if cell is None:
            problems.add(f"null {input_column!r}", row)
        label = label_text(value)
        if names is not None and isinstance(value, int):
            if not 0 <= value < len(names):
                problems.add(f"{label_column!r} outside its {len(names)} class names", row)
                labels.append("")
                continue
            label = names[value]
        if label is None:
            problems.add(f"null {label_column!r}", row)
        elif not label:
            problems.add(f"empty {label_column!r}", row)
        labels.append(label or "")
    if not inputs:
        problems.raise_any()
        raise DatasetError(f"{path}: no rows")
    # raised by metafit.data.tables with the input cells' problems, all at once
    return Rows(path, inputs, labels, list(range(len(inputs))), "row", problems.found)
