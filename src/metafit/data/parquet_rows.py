"""Reading a Parquet file of labelled examples with pyarrow (the ``data`` extra).

Before any data page is read: the file's size is checked against a cap, its footer is
parsed, the two columns are checked to exist and to have usable types, and the
uncompressed size the footer declares for them is checked against the same cap (a small
file cannot decompress into an unbounded table). Only the two columns are then read.
Rows are counted from 0 in errors. Types and labels: :mod:`metafit.data.arrow_columns`.
"""

from __future__ import annotations

from pathlib import Path

from metafit.data.arrow_columns import check_columns, import_pyarrow, table_rows
from metafit.data.errors import DatasetError
from metafit.data.rows import MAX_TABLE_BYTES, Rows, check_size

__all__ = ["read_parquet"]


def read_parquet(path: Path, input_column: str, label_column: str,
                 max_bytes: int = MAX_TABLE_BYTES) -> Rows:
    """The rows of the Parquet file ``path``, in file order.

    Raises:
        DatasetError: pyarrow missing (naming the extra), no such file, over ``max_bytes``
            (on disk or declared uncompressed), not a Parquet file, a missing column or one
            of the wrong type, null inputs, null or empty labels, no rows.
    """
    pa = import_pyarrow(f"{path} (Parquet)")
    import pyarrow.parquet as pq

    check_size(path, max_bytes)
    try:
        file = pq.ParquetFile(path)
        check_columns(pa, path, file.schema_arrow, input_column, label_column)
        meta = file.metadata
        wanted = {input_column, label_column}
        declared = sum(
            chunk.total_uncompressed_size
            for r in range(meta.num_row_groups)
            for chunk in (meta.row_group(r).column(c) for c in range(meta.num_columns))
            if any(chunk.path_in_schema == w or chunk.path_in_schema.startswith(f"{w}.")
                   for w in wanted)
        )
        if declared > max_bytes:
            raise DatasetError(f"{path}: columns {sorted(wanted)} declare {declared} bytes "
                               f"uncompressed, over the limit of {max_bytes} bytes")
        # Text and binary columns stay dictionary-encoded as Parquet stores them: a value
        # repeated many times is held once until table_rows converts it (bounded).
        schema = file.schema_arrow
        compact = [c for c in (input_column, label_column)
                   if pa.types.is_string(schema.field(c).type)
                   or pa.types.is_large_string(schema.field(c).type)
                   or pa.types.is_binary(schema.field(c).type)
                   or pa.types.is_large_binary(schema.field(c).type)]
        table = pq.ParquetFile(path, read_dictionary=compact).read(
            columns=[input_column, label_column])
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: cannot read it as Parquet ({e})") from e
    return table_rows(pa, path, table, input_column, label_column, max_bytes=max_bytes)
