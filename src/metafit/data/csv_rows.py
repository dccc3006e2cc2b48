"""Reading the rows of a CSV file of labelled texts, strictly: UTF-8 (a leading byte-order
mark is ignored), a header naming the text and label columns, every other non-blank row
with as many fields as the header, no empty text or label. Every problem is reported at
once, naming the file and the line numbers (empty cells together with the problems of
the input cells, by :mod:`metafit.data.tables`). The file's size is checked against a cap
before it is read. Used through :func:`read_csv` by :mod:`metafit.data.tables` (and so by
:class:`metafit.data.text_csv.TextCSV`).
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metafit.data.errors import DatasetError
from metafit.data.rows import MAX_TABLE_BYTES, SHOW, Rows, read_utf8

__all__ = ["SHOW", "line_numbers", "read_csv"]


def line_numbers(numbers: Sequence[int]) -> str:
    """``"3, 7, 9"`` or ``"3, 7, ... (25 lines in all)"``."""
    shown = ", ".join(str(n) for n in numbers[:SHOW])
    if len(numbers) > SHOW:
        shown += f", ... ({len(numbers)} lines in all)"
    return shown


@dataclass
class _Rows:
    """The data rows of a CSV file, in file order, and the lines of the faulty ones."""

    texts: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the line each record starts on
    no_text: list[int] = field(default_factory=list)
    no_label: list[int] = field(default_factory=list)
    wrong: list[int] = field(default_factory=list)  # another number of fields than the header


def read_csv(path: Path, input_column: str, label_column: str, lenient: bool = False,
             max_bytes: int = MAX_TABLE_BYTES) -> Rows:
    """The rows of the CSV as :class:`~metafit.data.rows.Rows`, in file order.

    Blank lines are skipped (they are not rows). A row with more or fewer fields than the
    header is an error (a comma in an unquoted text shifts the label); with ``lenient`` it
    is skipped with a warning naming the lines. Raises :class:`DatasetError` naming
    ``path`` and the offending line numbers (or its size, over ``max_bytes``).

    Empty inputs and labels are not raised here but kept in :attr:`Rows.found` (an empty
    input as ``None``), for :mod:`metafit.data.tables` to report with the problems of the
    input cells; rows with another number of fields than the header are raised at once
    (their cells are shifted, so nothing else about them can be trusted)."""
    reader = csv.reader(io.StringIO(read_utf8(path, max_bytes), newline=""))
    names = _header(reader, path, input_column, label_column)
    rows = _records(reader, path, len(names), names.index(input_column),
                    names.index(label_column), lenient)
    if rows.wrong and not lenient:
        _check(rows, path, names, input_column, label_column, lenient)
    _check(_Rows(texts=rows.texts, wrong=rows.wrong), path, names, input_column, label_column,
           lenient)  # the warning of skipped rows, or no rows at all
    found = {f"empty {input_column!r}": rows.no_text,
             f"missing or empty {label_column!r}": rows.no_label}
    empty = set(rows.no_text)
    inputs = [None if line in empty else text for text, line in zip(rows.texts, rows.lines,
                                                                      strict=True)]
    return Rows(path, inputs, rows.labels, rows.lines, "line",
                {problem: lines for problem, lines in found.items() if lines})


def _header(reader: Any, path: Path, text_column: str, label_column: str) -> list[str]:
    """The column names of the first non-blank row, which must hold both columns."""
    try:
        header: list[str] = []
        while not header:  # blank lines before the header are skipped too
            row = next(reader, None)
            if row is None:
                raise DatasetError(f"{path}: the file is empty (no header row)")
            header = row
    except csv.Error as e:
        raise DatasetError(f"{path}, line {reader.line_num}: malformed CSV header: {e}") from e
    header_line = reader.line_num
    names = [h.strip() for h in header]
    missing = [c for c in dict.fromkeys((text_column, label_column)) if c not in names]
    if missing:
        raise DatasetError(
            f"{path}, line {header_line}: column(s) {missing} not found; the header has "
            f"columns {names}"
        )
    twice = [c for c in dict.fromkeys((text_column, label_column)) if names.count(c) > 1]
    if twice:
        raise DatasetError(f"{path}, line {header_line}: column(s) {twice} appear more than "
                           "once in the header; which one is meant is unclear: rename one")
    return names


def _records(reader: Any, path: Path, fields: int, ti: int, li: int, lenient: bool) -> _Rows:
    """The rows after the header: text in column ``ti``, label in ``li``; a row without
    ``fields`` fields is noted in ``wrong`` (and skipped when ``lenient``)."""
    rows = _Rows()
    start = reader.line_num + 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1  # first line of this record
            if not row:  # a blank line
                continue
            if len(row) != fields:
                rows.wrong.append(line)
                if lenient:
                    continue
            text = row[ti].strip() if ti < len(row) else ""
            label = row[li].strip() if li < len(row) else ""
            if not text:
                rows.no_text.append(line)
            if not label:
                rows.no_label.append(line)
            rows.texts.append(text)
            rows.labels.append(label)
            rows.lines.append(line)
    except csv.Error as e:
        raise DatasetError(f"{path}, line {reader.line_num}: malformed CSV: {e}") from e
    return rows


def _check(rows: _Rows, path: Path, names: list[str], text_column: str, label_column: str,
           lenient: bool) -> None:
    """Raise one :class:`DatasetError` listing every problem of ``rows`` (or warn about
    the skipped rows when ``lenient``)."""
    wrong = rows.wrong
    fields = (f"{len(wrong)} row(s) with other than the header's {len(names)} field(s) "
              f"({', '.join(names)}), on line(s) {line_numbers(wrong)}")
    problems = []
    if wrong and lenient:
        warnings.warn(f"{path}: skipped {fields}", stacklevel=4)  # TextCSV's caller
    elif wrong:
        problems.append(f"{fields}: quote a field that holds a comma (TextCSV(..., "
                        f"lenient=True) skips such rows)")
    if rows.no_text:
        problems.append(f"empty {text_column!r} on line(s) {line_numbers(rows.no_text)}")
    if rows.no_label:
        problems.append(f"missing or empty {label_column!r} on line(s) "
                        f"{line_numbers(rows.no_label)}")
    if problems:
        raise DatasetError(f"{path}: " + "; ".join(problems))
    if not rows.texts:
        skipped = f" ({len(wrong)} skipped)" if wrong else ""
        raise DatasetError(f"{path}: no data rows after the header{skipped}")
