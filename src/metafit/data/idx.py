"""The IDX file pairs of the MNIST family (LeCun et al. 1998, "Gradient-based learning applied
to document recognition"; Fashion-MNIST, Xiao et al. 2017; KMNIST, Clanuwat et al. 2018;
EMNIST, Cohen et al. 2017).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype> <ndim>``, then ``ndim`` big-endian
uint32 dimension sizes, then the data in C order. Only dtype ``0x08`` (unsigned byte) is
read, which is what every MNIST-family file uses: images ``[N, rows, cols]`` (ndim 3) and
labels ``[N]`` (ndim 1). Files may be gzipped (``.gz``) or plain.

File names: ``<root>/<name>-images-idx3-ubyte[.gz]`` and ``<root>/<name>-labels-idx1-ubyte[.gz]``
with ``name="train"`` or ``"t10k"`` for MNIST / Fashion-MNIST / KMNIST, and e.g.
``"emnist-balanced-train"`` for EMNIST. The parsed arrays are cached on disk
(:func:`metafit.io.cached`) keyed on both files' size and mtime.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from metafit.data.base import TensorClassDataset
from metafit.data.errors import DatasetError
from metafit.io import cached, file_fingerprint

__all__ = ["IDX", "read_idx"]

log = logging.getLogger(__name__)

_UBYTE = 0x08
#: Largest IDX payload read (EMNIST's largest file holds about 0.6 GB).
MAX_IDX_BYTES = 2**30


def _find(root: Path, stem: str) -> Path:
    """``root/stem`` or ``root/stem.gz`` (the plain file wins when both exist)."""
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"neither {root / stem} nor {root / stem}.gz exists")


def read_idx(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
    """Read one IDX file (gzip or plain) of unsigned bytes with ``ndim`` dimensions.

    Returns:
        ``uint8`` array of the shape stored in the header.

    Raises:
        DatasetError: unreadable gzip, bad magic number, a dtype other than ``0x08``, a
            ``ndim`` other than the expected one, or a payload shorter or longer than the
            header says (the message names the file).
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise DatasetError(
                    f"{path} is not an IDX file: bad magic number {head.hex() or '(empty)'}")
            dtype, dims = head[2], head[3]
            if dtype != _UBYTE:
                raise DatasetError(f"{path}: IDX dtype 0x{dtype:02x} is not supported "
                                   "(only 0x08)")
            if dims != ndim:
                raise DatasetError(f"{path}: expected a {ndim}-dimensional IDX file, got {dims}")
            header = 4 + 4 * dims
            sizes = f.read(4 * dims)
            if len(sizes) < 4 * dims:
                raise DatasetError(f"{path} is truncated: {4 + len(sizes)} bytes, header "
                                   f"needs {header}")
            shape = struct.unpack(f">{dims}I", sizes)
            payload = int(np.prod(shape, dtype=np.int64))
            if payload > MAX_IDX_BYTES:
                raise DatasetError(f"{path}: header {list(shape)} declares {payload} bytes, "
                                   f"over the limit of {MAX_IDX_BYTES}")
            raw = f.read(payload + 1)  # never more than the header allows (a gzip bomb)
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < payload:
        raise DatasetError(f"{path} is truncated: {header + len(raw)} bytes, header "
                           f"{list(shape)} needs {header + payload}")
    if len(raw) > payload:
        raise DatasetError(f"{path} is longer than its header says: header {list(shape)} "
                           f"needs {header + payload} bytes")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def _load(images: Path, labels: Path) -> dict[str, torch.Tensor]:
    x = read_idx(images, 3)  # [N, rows, cols]
    y = read_idx(labels, 1)  # [N]
    if x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels"
        )
    log.info("read %d images of %dx%d from %s", *x.shape, images)
    return {
        "images": torch.from_numpy(x.copy()).unsqueeze(1),  # [N, 1, rows, cols]
        "labels": torch.from_numpy(y.astype(np.int64)),  # [N]
    }


class IDX(TensorClassDataset):
    """An MNIST-family IDX image/label pair as a class dataset.

    Args:
        root: the folder holding the two files.
        name: file-name prefix: ``"train"`` / ``"t10k"`` (MNIST, Fashion-MNIST, KMNIST) or
            e.g. ``"emnist-balanced-train"``.
        classes: class names; ``classes[i]`` names the i-th smallest label value present
            in the file. Default: the label values as strings (``"0"`` ... ``"9"``).
        cache: read/write the parsed arrays from/to the on-disk cache.
        transpose: swap rows and columns of every image. EMNIST stores its images
            transposed relative to MNIST; pass ``True`` to see upright characters.

    Attributes:
        data: ``uint8 [N, 1, rows, cols]`` (28x28 for the MNIST family), grouped by class.
        label_values: the distinct label values, ``label_values[c]`` is class ``c``.
        images_path, labels_path: the files read.

    Raises:
        FileNotFoundError: a file is missing (the message names both accepted names).
        DatasetError: a malformed file, or image and label counts that differ.
        ValueError: ``classes`` whose length differs from the number of distinct labels.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        name: str = "train",
        classes: Sequence[str] | None = None,
        cache: bool = True,
        transpose: bool = False,
    ) -> None:
        root = Path(root)
        images = _find(root, f"{name}-images-idx3-ubyte")
        labels = _find(root, f"{name}-labels-idx1-ubyte")
        key = [file_fingerprint(images), file_fingerprint(labels)]
        loaded = cached("idx", key, lambda: _load(images, labels), enabled=cache)
        data, raw_labels = loaded["images"], loaded["labels"]  # [N, 1, r, c], [N]
        if transpose:
            data = data.transpose(2, 3)  # [N, 1, c, r]
        values, targets = torch.unique(raw_labels, sorted=True, return_inverse=True)
        label_values = [int(v) for v in values.tolist()]
        if classes is None:
            names = [str(v) for v in label_values]
        else:
            names = list(classes)
            if len(names) != len(label_values):
                raise ValueError(
                    f"{len(names)} class names given but {labels} holds "
                    f"{len(label_values)} distinct labels ({label_values[:10]}...)"
                )
        self.root, self.name, self.transpose = root, name, transpose
        self.images_path, self.labels_path = images, labels
        self.label_values = label_values
        super().__init__(data, targets, names)
