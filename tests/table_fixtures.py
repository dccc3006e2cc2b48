"""Small tables of labelled examples in every format metafit reads, built in the tests:
JSON Lines, Parquet, and ``datasets`` directories written either by ``datasets`` itself
or by hand with pyarrow (the same files ``save_to_disk`` writes: ``state.json``,
``dataset_info.json``, an Arrow IPC stream)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_jsonl(path: Path, records: list[Any]) -> Path:
    """One JSON value a line (records may be any JSON, to test the errors)."""
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict[str, Any]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def write_arrow_dir(root: Path, columns: dict[str, Any], features: dict[str, Any] | None = None,
                    files: list[str] | None = None) -> Path:
    """A ``save_to_disk``-style directory: one Arrow stream per name in ``files`` (each
    holding all the rows), ``state.json`` listing them, ``dataset_info.json`` with
    ``features``."""
    import pyarrow as pa

    root.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    names = files or ["data-00000-of-00001.arrow"]
    for name in names:
        with pa.OSFile(str(root / name), "wb") as sink, \
                pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    state = {"_data_files": [{"filename": n} for n in names], "_fingerprint": "0",
             "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
             "_output_all_columns": False, "_split": None}
    (root / "state.json").write_text(json.dumps(state), encoding="utf-8")
    (root / "dataset_info.json").write_text(json.dumps({"features": features or {}}),
                                            encoding="utf-8")
    return root


def png(value: int, size: int = 6, rgb: bool = False) -> bytes:
    """A small PNG of one grey level (or one colour, red = ``value``)."""
    shape = (size, size, 3) if rgb else (size, size)
    pixels = np.full(shape, value, dtype=np.uint8)
    if rgb:
        pixels[..., 1:] = 0
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()
