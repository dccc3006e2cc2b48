"""Tables of labelled examples in any of the formats metafit reads, by the file's suffix:

- ``.csv``: :mod:`metafit.data.csv_rows` (a header row; line numbers in errors);
- ``.jsonl`` / ``.ndjson``: :mod:`metafit.data.jsonl_rows` (one JSON object a line);
- ``.parquet``: :mod:`metafit.data.parquet_rows` (pyarrow, the ``data`` extra);
- a directory written by ``datasets.Dataset.save_to_disk``:
  :mod:`metafit.data.arrow_dir_rows` (pyarrow; ``datasets`` itself is not needed).

Every reader gives the same :class:`~metafit.data.rows.Rows`; :func:`text_rows` then
checks that each input is a non-empty text, :func:`image_rows` that each is encoded image
bytes or a path that is safe to open (:mod:`metafit.data.image_sources`). Each file's
size is checked against ``max_bytes`` before it is read, and every problem is reported
at once, naming the file and the lines or rows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from metafit.data.errors import DatasetError
from metafit.data.rows import MAX_TABLE_BYTES, Problems, Rows

__all__ = ["SUFFIXES", "image_rows", "is_table", "read_table", "text_rows"]

#: File suffixes read as tables (and their readers' names, for messages).
SUFFIXES = {".csv": "CSV", ".jsonl": "JSON Lines", ".ndjson": "JSON Lines",
            ".parquet": "Parquet"}


def is_table(path: Path) -> bool:
    """Whether ``path`` is a table file by its suffix, or a ``datasets`` directory."""
    from metafit.data.arrow_dir_rows import is_datasets_dir

    return (path.suffix.lower() in SUFFIXES and not path.is_dir()) or is_datasets_dir(path)


def read_table(path: str | Path, input_column: str, label_column: str, lenient: bool = False,
               max_bytes: int = MAX_TABLE_BYTES, defer: bool = False) -> Rows:
    """The rows of the table at ``path``, the input cells as the file holds them.

    ``lenient``: CSV only, skip rows with another number of fields than the header.
    ``defer``: return the reader's problems with kept rows in :attr:`Rows.found` instead
    of raising them (for a caller that checks the cells and reports everything at once).

    Raises:
        DatasetError: an unknown suffix, a missing file, or any problem of the format's
            reader (naming the file and the lines or rows).
    """
    rows = _read(Path(path), input_column, label_column, lenient, max_bytes)
    if not defer:
        Problems.of(rows).raise_any()
    return rows


def _read(path: Path, input_column: str, label_column: str, lenient: bool,
          max_bytes: int) -> Rows:
    """The format's reader on ``path``, by its suffix (or a ``datasets`` directory)."""
    from metafit.data.arrow_dir_rows import is_datasets_dir, read_arrow_dir

    if path.is_dir():
        if not is_datasets_dir(path):
            raise DatasetError(f"{path} is a directory without state.json or "
                               "dataset_dict.json: not one written by datasets' save_to_disk")
        return read_arrow_dir(path, input_column, label_column, max_bytes)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        from metafit.data.csv_rows import read_csv

        return read_csv(path, input_column, label_column, lenient, max_bytes)
    if suffix in (".jsonl", ".ndjson"):
        from metafit.data.jsonl_rows import read_jsonl

        return read_jsonl(path, input_column, label_column, max_bytes)
    if suffix == ".parquet":
        from metafit.data.parquet_rows import read_parquet

        return read_parquet(path, input_column, label_column, max_bytes)
    raise DatasetError(f"{path}: unknown table format {suffix or '(no suffix)'!r}; metafit "
                       f"reads {', '.join(SUFFIXES)} files and directories written by "
                       "datasets' save_to_disk")


def text_rows(path: str | Path, text_column: str, label_column: str, lenient: bool = False,
              max_bytes: int = MAX_TABLE_BYTES) -> Rows:
    """The rows of a table of labelled texts: each input a stripped, non-empty string.

    Raises:
        DatasetError: as :func:`read_table`, and inputs that are not strings or are
            empty, naming the lines or rows.
    """
    rows = read_table(path, text_column, label_column, lenient, max_bytes, defer=True)
    problems = Problems.of(rows)
    texts: list[str] = []
    for cell, place in zip(rows.inputs, rows.places, strict=True):
        text = cell.strip() if isinstance(cell, str) else ""
        if cell is None:  # missing or null: the reader said so
            pass
        elif not isinstance(cell, str):
            problems.add(f"{text_column!r} that is not a string", place)
        elif not text:
            problems.add(f"empty {text_column!r}", place)
        texts.append(text)
    problems.raise_any()
    return replace(rows, inputs=texts)


def image_rows(path: str | Path, image_column: str, label_column: str,
               absolute_paths: bool = False, max_bytes: int = MAX_TABLE_BYTES) -> Rows:
    """The rows of a table of labelled images: each input encoded image bytes, or the
    resolved path of an image file (see :mod:`metafit.data.image_sources`; relative paths
    are taken from the folder holding the table, or from a ``datasets`` directory itself).

    Raises:
        DatasetError: as :func:`read_table`, and image cells that are empty, of another
            type, absolute or leading out of the folder (unless ``absolute_paths``), or
            naming no file: the file, the problem and its lines or rows.
    """
    from metafit.data.image_sources import image_source

    rows = read_table(path, image_column, label_column, max_bytes=max_bytes, defer=True)
    folder = rows.path if rows.path.is_dir() else rows.path.parent
    base = folder.resolve()
    problems = Problems.of(rows)
    sources: list[Any] = []
    for cell, place in zip(rows.inputs, rows.places, strict=True):
        source, problem = (None, None) if cell is None else image_source(cell, base,
                                                                          absolute_paths)
        if problem is not None:
            problems.add(problem, place)
        sources.append(source)
    hint = "" if absolute_paths else (
        f" (relative paths are read from {base} and must stay inside it; allow other paths "
        "only for a table you trust: --absolute-image-paths on the command line, "
        "absolute_image_paths in a recipe or from Python)")
    problems.raise_any(hint if any("path" in p for p in problems.found) else "")
    return replace(rows, inputs=sources)
