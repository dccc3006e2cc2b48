"""Labelled images listed in a table (CSV, JSON Lines, Parquet or a ``datasets``
directory): an image column of encoded images or of paths, and a label column.

The rows are read by :func:`metafit.data.tables.image_rows` (paths relative to the
table's folder and kept inside it unless ``absolute_paths``). Every image is decoded once
as :class:`~metafit.data.image_folder.ImageFolder` decodes its files
(:func:`~metafit.data.image_folder.decode_image`: the pixel count in the header checked
against ``max_pixels`` before decoding, grayscale or RGB, Lanczos resize) into one uint8
tensor ``[N, channels, image_size, image_size]``, cached on disk keyed on the table's
files and every image file named in it. Classes are the sorted distinct labels.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from metafit.data.base import TensorClassDataset
from metafit.data.image_folder import (
    MAX_IMAGE_PIXELS,
    ImageTooLarge,
    decode_image,
    fingerprint_files,
    image_mode,
)
from metafit.data.ink_crop import check_crop, crop_key
from metafit.data.rows import MAX_TABLE_BYTES, Problems, Rows
from metafit.data.tables import image_rows
from metafit.io import cached

__all__ = ["ImageTable"]

log = logging.getLogger(__name__)


def _table_files(path: Path) -> list[Path]:
    """The files a table's content lies in: the file, or a directory's files."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file())
    return [path]


def _decode(rows: Rows, image_size: int, mode: str, max_pixels: int | None,
            crop: str = "none") -> np.ndarray:
    """``uint8 [N, S, S, C]`` of every row's image; one error naming every row whose
    image is over the pixel limit or cannot be decoded (with the first reason)."""
    channels = 1 if mode == "L" else 3
    data = np.zeros((len(rows.inputs), image_size, image_size, channels), dtype=np.uint8)
    problems = Problems(rows.path, rows.unit)
    first = ""
    for i, (source, place) in enumerate(zip(rows.inputs, rows.places, strict=True)):
        try:
            pixels = decode_image(source, image_size, mode, max_pixels, crop)  # [S, S(, 3)]
        except ImageTooLarge as e:
            problems.add("an image over the pixel limit", place)
            first = first or f"{place}: {e}"
        except Exception as e:  # any decoder failure is a dataset error
            problems.add("an image that cannot be decoded", place)
            named = f"{source}: " if isinstance(source, Path) else ""
            first = first or f"{place}: {named}{e}"
        else:
            data[i] = pixels.reshape(image_size, image_size, channels)
    problems.raise_any(f" (first, {rows.unit} {first})" if first else "")
    return data


class ImageTable(TensorClassDataset):
    """Images listed in a table, one row an example (a ``ClassDataset``).

    Args:
        path: a ``.csv``, ``.jsonl`` or ``.parquet`` file, or a ``save_to_disk`` directory.
        image_column: the column of encoded images or image paths.
        label_column: the column of class names (or integers).
        image_size: side of the square images after resizing.
        channels: 1 (grayscale, PIL mode ``"L"``) or 3 (``"RGB"``).
        invert: store ``255 - x``.
        cache: read/write the decoded tensor from/to the on-disk cache.
        absolute_paths: accept absolute image paths and paths leading out of the table's
            folder (only for a table you trust).
        max_bytes: the largest table read (checked before reading).
        max_pixels: the most pixels an image may declare (checked before decoding).
        crop: ``"ink"``: each image cropped to the square around its drawing before the
            resize (:mod:`metafit.data.ink_crop`); ``"none"``: the whole image.

    Attributes:
        data: ``uint8 [N, channels, image_size, image_size]``, grouped by class.
        classes: the sorted labels. ``sources``: each row's image (a path, or ``None``
            for encoded bytes), in the table's order.

    Raises:
        DatasetError: any problem of the table (:func:`~metafit.data.tables.image_rows`),
            or images over the pixel limit or that cannot be decoded (naming the file, the
            rows, and the first reason).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_column: str = "image",
        label_column: str = "label",
        image_size: int = 28,
        channels: int = 1,
        invert: bool = False,
        cache: bool = True,
        absolute_paths: bool = False,
        max_bytes: int = MAX_TABLE_BYTES,
        max_pixels: int | None = MAX_IMAGE_PIXELS,
        crop: str = "none",
    ) -> None:
        path = Path(path)
        mode = image_mode(channels, image_size, path)
        check_crop(crop)
        rows = image_rows(path, image_column, label_column, absolute_paths, max_bytes)
        names = sorted(set(rows.labels))
        index = {c: i for i, c in enumerate(names)}
        files = [s for s in rows.inputs if isinstance(s, Path)]

        def build() -> dict[str, torch.Tensor]:
            log.info("decoding %d images listed in %s", len(rows.inputs), path)
            data = _decode(rows, image_size, mode, max_pixels, crop)  # [N, S, S, C]
            return {"data": torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()}

        key = [str(path.resolve()), fingerprint_files(_table_files(path)),
               fingerprint_files(files), f"columns={image_column},{label_column}",
               f"size={image_size}", mode, f"max_pixels={max_pixels}", *crop_key(crop)]
        data = cached("image_table", key, build, enabled=cache)["data"]  # [N, C, S, S]
        self.path = path
        self.sources: list[Path | None] = [s if isinstance(s, Path) else None
                                           for s in rows.inputs]
        targets = torch.tensor([index[label] for label in rows.labels], dtype=torch.long)
        super().__init__(data, targets, names, invert=invert)
