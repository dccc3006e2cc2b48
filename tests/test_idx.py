"""IDX (MNIST family): header parsing, gzip and plain files, labels, transpose, errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import metafit.data.idx as idx_module
from metafit.data.errors import DatasetError
from metafit.data.idx import IDX

N, ROWS, COLS = 12, 28, 28


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path / "cache"))


def idx_bytes(array: np.ndarray, dtype_code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, dtype_code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write(path: Path, payload: bytes) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload, mtime=0))
    else:
        path.write_bytes(payload)
    return path


def make_arrays(n: int = N, labels: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n, ROWS, COLS), dtype=np.uint8)
    y = np.array(labels if labels is not None else [i % 3 + 2 for i in range(n)], np.uint8)
    return images, y


def write_pair(root: Path, name: str, gz: bool, images: np.ndarray, labels: np.ndarray) -> None:
    suffix = ".gz" if gz else ""
    write(root / f"{name}-images-idx3-ubyte{suffix}", idx_bytes(images))
    write(root / f"{name}-labels-idx1-ubyte{suffix}", idx_bytes(labels))


@pytest.mark.parametrize("gz", [False, True])
def test_loads_images_and_labels(tmp_path: Path, gz: bool) -> None:
    images, labels = make_arrays()
    write_pair(tmp_path, "train", gz, images, labels)
    ds = IDX(tmp_path, "train")
    assert ds.data.shape == (N, 1, ROWS, COLS) and ds.data.dtype == torch.uint8
    assert ds.classes == ["2", "3", "4"] and ds.label_values == [2, 3, 4]
    assert ds.counts.tolist() == [4, 4, 4]
    assert ds.images_path.name.endswith(".gz") == gz
    for c, value in enumerate(ds.label_values):
        want = torch.from_numpy(images[labels == value]).unsqueeze(1)  # [4, 1, 28, 28]
        assert torch.equal(ds.data[ds.targets == c], want)
        torch.testing.assert_close(ds.examples(c), want.float() * (1 / 255), rtol=0, atol=0)


def test_class_names_and_transpose(tmp_path: Path) -> None:
    images, labels = make_arrays(labels=[1, 3, 1, 2, 3, 2, 1, 1, 2, 3, 3, 3])
    write_pair(tmp_path, "emnist-letters-train", False, images, labels)
    ds = IDX(tmp_path, "emnist-letters-train", classes=["a", "b", "c"], transpose=True)
    assert ds.classes == ["a", "b", "c"] and ds.counts.tolist() == [4, 3, 5]
    first_b = torch.from_numpy(images[3].T.copy())  # label 2 = "b", transposed
    assert not torch.equal(first_b, torch.from_numpy(images[3]))
    assert torch.equal(ds.data[int(ds.offsets[1]), 0], first_b)
    with pytest.raises(ValueError, match="3 distinct labels"):
        IDX(tmp_path, "emnist-letters-train", classes=["a", "b"])


def test_cache_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_pair(tmp_path, "t10k", True, *make_arrays())
    first = IDX(tmp_path, "t10k")
    assert list((tmp_path / "cache").glob("idx-*.pt"))

    def refuse(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("parsed although cached")

    monkeypatch.setattr(idx_module, "read_idx", refuse)
    assert torch.equal(IDX(tmp_path, "t10k").data, first.data)
    with pytest.raises(AssertionError, match="parsed although cached"):
        IDX(tmp_path, "t10k", cache=False)


def test_missing_file_names_both_accepted_names(tmp_path: Path) -> None:
    images, _ = make_arrays()
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(images))
    with pytest.raises(FileNotFoundError) as info:
        IDX(tmp_path, "train")
    message = str(info.value)
    assert "train-labels-idx1-ubyte" in message and "train-labels-idx1-ubyte.gz" in message


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("defect", ["magic", "truncated", "longer", "dtype", "ndim", "empty"])
def test_malformed_files(tmp_path: Path, defect: str, gz: bool) -> None:
    images, labels = make_arrays()
    payload = idx_bytes(images)
    payload = {
        "magic": b"\x12\x34" + payload[2:],
        "truncated": payload[:-100],
        "longer": payload + b"\x00",
        "dtype": idx_bytes(images, dtype_code=0x0D),
        "ndim": idx_bytes(images.reshape(N, -1)),
        "empty": b"",
    }[defect]
    suffix = ".gz" if gz else ""
    write(tmp_path / f"train-images-idx3-ubyte{suffix}", payload)
    write(tmp_path / f"train-labels-idx1-ubyte{suffix}", idx_bytes(labels))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte"):
        IDX(tmp_path, "train")


def test_count_mismatch_and_corrupt_gzip(tmp_path: Path) -> None:
    images, labels = make_arrays()
    write_pair(tmp_path, "train", False, images, labels[:-1])
    with pytest.raises(DatasetError, match=f"{N} images .* {N - 1} labels"):
        IDX(tmp_path, "train")
    (tmp_path / "bad-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    write(tmp_path / "bad-labels-idx1-ubyte", idx_bytes(labels))
    with pytest.raises(DatasetError, match="bad-images-idx3-ubyte.gz") as info:
        IDX(tmp_path, "bad")
    assert info.value.__cause__ is not None
