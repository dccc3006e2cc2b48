"""Reading a JSON Lines file of labelled examples, strictly: UTF-8 (a leading byte-order
mark is ignored), one JSON object per non-blank line, each holding the input column and
the label column. A label is a string or an integer (read as its decimal string); the
input cell is returned as the file holds it and checked by :mod:`metafit.data.tables`
(a text or an image path: JSON has no bytes). Every problem is reported at once, naming
the file and the line numbers (the problems of the file are kept in :attr:`Rows.found` and
raised with those of the input cells); the file's size is checked against a cap before it is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metafit.data.errors import DatasetError
from metafit.data.rows import MAX_TABLE_BYTES, Problems, Rows, read_utf8

__all__ = ["read_jsonl", "label_text"]


def label_text(value: Any) -> str | None:
    """A label cell as a stripped string: a string, or an integer as its decimal string;
    ``None`` for anything else (a float, a bool, a list, null)."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def read_jsonl(path: Path, input_column: str, label_column: str,
               max_bytes: int = MAX_TABLE_BYTES) -> Rows:
    """The rows of the JSON Lines file ``path``, in file order (blank lines skipped).

    Raises:
        DatasetError: no such file, over ``max_bytes``, not UTF-8, a line that is not a
            JSON object, a missing or null input, a missing, empty or non-string,
            non-integer label, no rows: one message naming the file and every faulty line.
    """
    text = read_utf8(path, max_bytes)
    problems = Problems(path, "line")
    inputs: list[Any] = []
    labels: list[str] = []
    lines: list[int] = []
    # split on "\n" only: str.splitlines would also cut at U+2028 and other characters a
    # JSON string may hold unescaped
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            problems.add("not valid JSON", number)
            continue
        if not isinstance(record, dict):
            problems.add("not a JSON object", number)
            continue
        cell = record.get(input_column)
        if cell is None:
            problems.add(f"missing or null {input_column!r}", number)
        label = label_text(record.get(label_column))
        if label is None:
            problems.add(f"missing {label_column!r}, or not a string or an integer", number)
        elif not label:
            problems.add(f"empty {label_column!r}", number)
        inputs.append(cell)
        labels.append(label or "")
        lines.append(number)
    if not inputs:
        problems.raise_any()
        raise DatasetError(f"{path}: no rows (a JSON Lines file holds one JSON object a line)")
    # raised by metafit.data.tables with the input cells' problems, all at once
    return Rows(path, inputs, labels, lines, "line", problems.found)
