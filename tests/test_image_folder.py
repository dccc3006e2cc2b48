"""ImageFolder: class-per-folder loading, grayscale vs RGB, inversion, cache and errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metafit.data.image_folder as image_folder_module
from metafit.data.errors import DatasetError
from metafit.data.image_folder import ImageFolder
from metafit.data.sampler import EpisodeSampler


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path / "cache"))


def gray(value: int, size: int = 6) -> np.ndarray:
    """A ``size x size`` gray image: a gradient offset by ``value`` (distinct per image)."""
    return ((np.arange(size * size).reshape(size, size) * 3 + value) % 256).astype(np.uint8)


def make_tree(root: Path) -> dict[str, list[int]]:
    """root/{cat,dog,emu}/ with 2, 3 and 1 images in PNG, BMP and TIFF, plus decoys."""
    layout = {"cat": [10, 20], "dog": [30, 40, 50], "emu": [60]}
    formats = ["png", "bmp", "tiff"]
    for name, values in layout.items():
        (root / name).mkdir(parents=True)
        for i, v in enumerate(values):
            Image.fromarray(gray(v)).save(root / name / f"img{i}.{formats[i % 3]}")
    (root / "cat" / "notes.txt").write_text("not an image")  # ignored: extension
    (root / "cat" / ".hidden.png").write_bytes(b"garbage")  # ignored: hidden file
    (root / ".thumbs").mkdir()  # ignored: hidden folder
    (root / ".thumbs" / "x.png").write_bytes(b"garbage")
    (root / "README.md").write_text("a file next to the class folders is ignored")
    return layout


def test_loads_classes_shapes_and_labels(tmp_path: Path) -> None:
    layout = make_tree(tmp_path / "data")
    ds = ImageFolder(tmp_path / "data", image_size=6)
    assert ds.classes == ["cat", "dog", "emu"]
    assert ds.counts.tolist() == [2, 3, 1] and len(ds) == 6
    assert ds.data.shape == (6, 1, 6, 6) and ds.data.dtype == torch.uint8
    assert [f.parent.name for f in ds.files] == ["cat"] * 2 + ["dog"] * 3 + ["emu"]
    for c, name in enumerate(ds.classes):
        want = torch.stack([torch.from_numpy(gray(v)) for v in layout[name]]).unsqueeze(1)
        torch.testing.assert_close(ds.examples(c), want.float() * (1 / 255), rtol=0, atol=0)
        assert torch.equal(ds.data[ds.targets == c], want)
    assert ds.targets.tolist() == [0, 0, 1, 1, 1, 2]


def test_resize_and_invert(tmp_path: Path) -> None:
    make_tree(tmp_path / "data")
    ds = ImageFolder(tmp_path / "data", image_size=12, invert=True)
    assert ds.example_shape == (1, 12, 12)
    plain = ImageFolder(tmp_path / "data", image_size=12)
    assert torch.equal(ds.data, 255 - plain.data)


def test_rgb_versus_grayscale(tmp_path: Path) -> None:
    tmp_path = tmp_path / "data"
    (tmp_path / "red").mkdir(parents=True)
    (tmp_path / "blue").mkdir()
    Image.new("RGB", (5, 5), (255, 0, 0)).save(tmp_path / "red" / "a.png")
    Image.new("RGB", (5, 5), (0, 0, 255)).save(tmp_path / "blue" / "a.png")
    rgb = ImageFolder(tmp_path, image_size=5, channels=3)
    assert rgb.classes == ["blue", "red"] and rgb.data.shape == (2, 3, 5, 5)
    assert rgb.data[1, :, 2, 2].tolist() == [255, 0, 0]  # red
    assert rgb.data[0, :, 2, 2].tolist() == [0, 0, 255]  # blue
    gray_ds = ImageFolder(tmp_path, image_size=5, channels=1)
    assert gray_ds.data.shape == (2, 1, 5, 5)
    # ITU-R 601-2 luma, as PIL's "L": red -> 76, blue -> 29
    assert int(gray_ds.data[1, 0, 2, 2]) == 76 and int(gray_ds.data[0, 0, 2, 2]) == 29


def test_second_load_uses_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tree(tmp_path / "data")
    first = ImageFolder(tmp_path / "data", image_size=6)
    assert list((tmp_path / "cache").glob("image_folder-*.pt"))

    def refuse(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(image_folder_module, "decode_image", refuse)
    assert torch.equal(ImageFolder(tmp_path / "data", image_size=6).data, first.data)
    with pytest.raises(DatasetError, match="decoded although cached"):
        ImageFolder(tmp_path / "data", image_size=6, channels=3)  # another cache entry


def test_episodes_from_an_image_folder(tmp_path: Path) -> None:
    tmp_path = tmp_path / "data"
    for c in range(4):
        (tmp_path / f"c{c}").mkdir(parents=True)
        for i in range(3):
            Image.fromarray(gray(c * 10 + i)).save(tmp_path / f"c{c}" / f"{i}.png")
    ds = ImageFolder(tmp_path, image_size=6)
    eps = EpisodeSampler(ds, ways=3, shots=1, queries=2, seed=0).sample(4)
    assert eps.support_x.shape == (4, 3, 1, 6, 6) and eps.query_y.shape == (4, 6)


def test_corrupt_image_names_the_file(tmp_path: Path) -> None:
    make_tree(tmp_path)
    bad = tmp_path / "dog" / "broken.png"
    good = (tmp_path / "dog" / "img0.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated PNG
    with pytest.raises(DatasetError, match="broken.png") as info:
        ImageFolder(tmp_path, image_size=6)
    assert info.value.__cause__ is not None
    bad.write_bytes(b"plain text with a .png name")
    with pytest.raises(DatasetError, match="broken.png"):
        ImageFolder(tmp_path, image_size=6)


def test_empty_class_folder(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "fox").mkdir()
    (tmp_path / "fox" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="fox"):
        ImageFolder(tmp_path, image_size=6)


def test_no_class_folders_and_missing_root(tmp_path: Path) -> None:
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no class folders"):
        ImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError):
        ImageFolder(tmp_path / "missing")


@pytest.mark.parametrize("channels", [0, 2, 4])
def test_bad_channels(tmp_path: Path, channels: int) -> None:
    make_tree(tmp_path)
    with pytest.raises(DatasetError, match="channels"):
        ImageFolder(tmp_path, channels=channels)
