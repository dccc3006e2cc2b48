"""Reading a directory written by ``datasets.Dataset.save_to_disk`` with pyarrow alone:
``datasets`` is not imported and nothing in the directory is unpickled or run.

Such a directory holds ``state.json`` (the data files, ``_data_files``), ``dataset_info.json``
(the ``features``: a ``ClassLabel``'s class names) and ``data-NNNNN-of-NNNNN.arrow``
(Arrow IPC streams). The JSON files are read bounded in size; each data file must be a
plain file name in the directory itself (no path, no link leading out of it); their sizes
together are checked against a cap before any is read, and the rows read are bounded by
the same cap as they come in. A ``DatasetDict`` directory (``dataset_dict.json`` and one
folder per split) is refused with the folders to give instead. Rows are counted from 0
across the data files, as ``dataset[i]`` counts them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from metafit.data.arrow_columns import (
    check_columns,
    class_names,
    import_pyarrow,
    schema_features,
    table_rows,
)
from metafit.data.errors import DatasetError
from metafit.data.rows import MAX_TABLE_BYTES, Rows, check_size

__all__ = ["DATASET_DICT", "STATE", "is_datasets_dir", "read_arrow_dir"]

STATE, INFO, DATASET_DICT = "state.json", "dataset_info.json", "dataset_dict.json"
MAX_JSON_BYTES = 1 << 20  # a state.json or dataset_info.json larger than this is refused
_DATA_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.arrow")


def is_datasets_dir(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``save_to_disk`` (a ``Dataset`` or a
    ``DatasetDict``)."""
    return path.is_dir() and ((path / STATE).is_file() or (path / DATASET_DICT).is_file())


def _json(path: Path) -> Any:
    """A small JSON file, parsed (bounded in size).

    Raises:
        DatasetError: unreadable, too large, or not JSON (naming the file).
    """
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise DatasetError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(raw) > MAX_JSON_BYTES:
        raise DatasetError(f"{path}: larger than {MAX_JSON_BYTES} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


def _refuse_dataset_dict(path: Path) -> None:
    info = _json(path / DATASET_DICT)
    splits = info.get("splits") if isinstance(info, dict) else None
    named = [s for s in splits if isinstance(s, str)] if isinstance(splits, list) else []
    example = path / (named[0] if named else "train")
    raise DatasetError(f"{path} holds a DatasetDict (splits {named}); give the folder of one "
                       f"split, e.g. {example}")


def data_files(path: Path) -> list[Path]:
    """The Arrow files that ``state.json`` lists, checked to be plain files directly in
    ``path``.

    Raises:
        DatasetError: a malformed ``state.json``, an indices mapping, a data file name with
            a path or odd characters, a missing file or one leading out of ``path``.
    """
    state = _json(path / STATE)
    listed = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(listed, list) or not listed:
        raise DatasetError(f"{path / STATE}: no '_data_files' list (not written by "
                           "datasets' save_to_disk?)")
    if state.get("_indices_data_files"):
        raise DatasetError(f"{path / STATE}: an indices mapping is not read; save the dataset "
                           "again after dataset.flatten_indices()")
    real = path.resolve()
    files = []
    for entry in listed:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _DATA_FILE.fullmatch(name):
            raise DatasetError(f"{path / STATE}: data file {str(name)[:100]!r} is not a plain "
                               "*.arrow file name")
        file = path / name
        if not file.is_file() or file.resolve().parent != real:
            raise DatasetError(f"{file}: listed in {STATE} but not a file in {path}")
        files.append(file)
    return files


def _read_stream(pa: ModuleType, file: Path, budget: int) -> Any:
    """One Arrow IPC file (stream format, as ``datasets`` writes it; else file format),
    read batch by batch while the batches stay within ``budget`` bytes."""
    with pa.OSFile(str(file), "rb") as source:
        try:
            reader = pa.ipc.open_stream(source)
        except pa.ArrowInvalid:
            source.seek(0)
            reader = pa.ipc.open_file(source)
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        kept, held = [], 0
        for batch in batches:
            held += batch.nbytes
            if held > budget:
                raise DatasetError(f"{file}: its rows take more than the {budget} bytes left "
                                   "of the limit on a table's size in memory")
            kept.append(batch)
        return pa.Table.from_batches(kept, schema=reader.schema)


def read_arrow_dir(path: Path, input_column: str, label_column: str,
                   max_bytes: int = MAX_TABLE_BYTES) -> Rows:
    """The rows of the ``save_to_disk`` directory ``path``, in the dataset's order.

    Raises:
        DatasetError: pyarrow missing (naming the extra), a DatasetDict directory (naming
            its split folders), a malformed ``state.json``, data files over ``max_bytes``
            or unreadable, a missing column or one of the wrong type, null inputs, null or
            empty labels, an integer label outside the ClassLabel's names, no rows.
    """
    pa = import_pyarrow(f"{path} (a datasets directory)")
    if not (path / STATE).is_file():
        if (path / DATASET_DICT).is_file():
            _refuse_dataset_dict(path)
        raise DatasetError(f"{path}: no {STATE} (not a directory written by save_to_disk)")
    files = data_files(path)
    check_size(path, max_bytes, sum(f.stat().st_size for f in files))
    info = _json(path / INFO) if (path / INFO).is_file() else None
    tables, budget = [], max_bytes
    try:
        for file in files:
            table = _read_stream(pa, file, budget)
            budget -= table.nbytes
            check_columns(pa, file, table.schema, input_column, label_column)
            tables.append(table.select([input_column, label_column]))
        table = pa.concat_tables(tables)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: cannot read its Arrow files ({e})") from e
    features = info.get("features") if isinstance(info, dict) else None
    names = class_names(features or schema_features(table.schema), label_column)
    return table_rows(pa, path, table, input_column, label_column, names, max_bytes)
