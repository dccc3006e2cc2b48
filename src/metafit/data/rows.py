"""What every reader of a table of labelled examples returns, and the checks the readers
share: a size cap checked before a file is read, UTF-8 decoding that names the line of a
bad byte, and one error listing every faulty line or row.

A reader (:mod:`~metafit.data.csv_rows`, :mod:`~metafit.data.jsonl_rows`,
:mod:`~metafit.data.parquet_rows`, :mod:`~metafit.data.arrow_dir_rows`) returns
:class:`Rows`: the cells of the input column (texts, image paths or encoded images, as
the file holds them), the labels as strings, and where each row is (a line of a text
file, counted from 1; a row of a Parquet or Arrow table, counted from 0, as pyarrow and
pandas count them). :mod:`metafit.data.tables` picks the reader by the file's suffix and
checks the input cells for the kind of data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from metafit.data.errors import DatasetError

__all__ = ["MAX_TABLE_BYTES", "SHOW", "Problems", "Rows", "check_size", "line_of",
           "numbers", "read_utf8"]

#: The largest table file (or ``datasets`` directory, all its data files together) read;
#: the size is checked before anything is read. Tables of encoded images may be large:
#: pass ``max_bytes`` to the readers to allow more.
MAX_TABLE_BYTES = 2 * 2**30

SHOW = 10  # places shown in an error message before "... (N lines in all)"

Unit = Literal["line", "row"]


@dataclass(frozen=True)
class Rows:
    """The labelled rows of one table, in file order.

    Attributes:
        path: the file (or ``datasets`` directory) read.
        inputs: the input column's cell of each row: ``str`` from a CSV or JSONL file;
            ``str``, ``bytes`` or a ``{"bytes", "path"}`` dict (a Hugging Face image) from
            Parquet and Arrow.
        labels: each row's label, stripped (an integer label as its decimal string, or its
            class name where the table names its classes).
        places: each row's line (from 1) or row (from 0); ``unit`` says which.
        found: the reader's problems with rows it kept (``"null 'text'"`` -> places),
            not yet raised, so that :mod:`metafit.data.tables` reports them together with
            the problems of the input cells (:meth:`Problems.of`); a row whose input
            is ``None`` is among them.
    """

    path: Path
    inputs: list[Any]
    labels: list[str]
    places: list[int]
    unit: Unit
    found: dict[str, list[int]] = field(default_factory=dict)

    def where(self, places: Sequence[int]) -> str:
        """``"line(s) 3, 7"`` or ``"row(s) 0, 4"`` for an error message."""
        return numbers(places, self.unit)


def numbers(places: Sequence[int], unit: Unit = "line") -> str:
    """``"line(s) 3, 7, 9"``, or ``"row(s) 3, 7, ... (25 rows in all)"`` past :data:`SHOW`."""
    shown = ", ".join(str(n) for n in places[:SHOW])
    if len(places) > SHOW:
        shown += f", ... ({len(places)} {unit}s in all)"
    return f"{unit}(s) {shown}"


def check_size(path: Path, max_bytes: int, size: int | None = None) -> int:
    """The size of ``path`` (or ``size`` where the caller summed several files), refused
    over ``max_bytes`` before anything is read.

    Raises:
        DatasetError: no such file, or too large (naming the file, its size and the cap).
    """
    if size is None:
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        size = path.stat().st_size
    if size > max_bytes:
        raise DatasetError(f"{path}: {size} bytes, over the limit of {max_bytes} bytes for a "
                           "table (pass max_bytes to read a larger one)")
    return size


def line_of(raw: bytes, offset: int) -> int:
    """The line (1-based) holding byte ``offset`` of ``raw``, counting line ends as the
    :mod:`csv` reader does (``\\n``, ``\\r\\n`` or a lone ``\\r``)."""
    head = raw[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


def read_utf8(path: Path, max_bytes: int = MAX_TABLE_BYTES) -> str:
    """The file decoded as UTF-8 (a leading byte-order mark dropped), its size checked
    against ``max_bytes`` first.

    Raises:
        DatasetError: no such file, too large, or not UTF-8 (naming the line of the first
            bad byte).
    """
    check_size(path, max_bytes)
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(
            f"{path}, line {line_of(raw, e.start)}: not valid UTF-8 (byte "
            f"{raw[e.start]:#04x} at offset {e.start}); re-encode the file as UTF-8"
        ) from e


@dataclass
class Problems:
    """The faulty places of a table, by problem (``"empty 'text'"`` -> lines), reported
    together as one :class:`DatasetError`."""

    path: Path
    unit: Unit
    found: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Rows) -> Problems:
        """The problems a reader left in ``rows`` (:attr:`Rows.found`), to add to."""
        return cls(rows.path, rows.unit, {k: list(v) for k, v in rows.found.items()})

    def add(self, problem: str, place: int) -> None:
        self.found.setdefault(problem, []).append(place)

    def raise_any(self, hint: str = "") -> None:
        """Raise one error naming the file, each problem and its places (if any)."""
        if not self.found:
            return
        parts = [f"{problem} on {numbers(places, self.unit)}"
                 for problem, places in self.found.items()]
        raise DatasetError(f"{self.path}: " + "; ".join(parts) + hint)
