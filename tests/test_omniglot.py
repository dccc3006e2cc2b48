"""Omniglot: sources, deduplication, decoding, rotations, splits, cache, errors, sampling.

Fixtures are tiny zips in the official layout ``<set>/<Alphabet>/characterNN/<id>_<nn>.png``
holding 8x8 black-on-white PNGs whose pixels are a deterministic function of
(alphabet, character, drawer), so every decoded image can be checked exactly.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metafit.data.omniglot_files as omniglot_files
from metafit.data.errors import DatasetError
from metafit.data.omniglot import Omniglot
from metafit.data.sampler import EpisodeSampler

SIZE = 8  # fixture images are 8x8, loaded at image_size=8: no resampling, exact values
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path / "cache"))


def pattern(alphabet: str, character: int, drawer: int, size: int = SIZE) -> np.ndarray:
    """A black (0) / white (255) image, distinct for every (alphabet, character, drawer)."""
    seed = sum(map(ord, alphabet)) * 10_000 + character * 100 + drawer
    bits = np.random.default_rng(seed).random((size, size)) < 0.3
    return np.where(bits, 0, 255).astype(np.uint8)  # strokes black, background white


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").convert("1").save(buf, format="PNG")  # like Omniglot
    return buf.getvalue()


def write_zip(root: Path, set_name: str, alphabets: dict[str, int], drawers: int = 4) -> Path:
    path = root / f"{set_name}.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{set_name}/", b"")
        for alphabet, n_chars in alphabets.items():
            for c in range(1, n_chars + 1):
                for d in range(1, drawers + 1):
                    name = f"{set_name}/{alphabet}/character{c:02d}/{c:02d}{d:02d}_{d:02d}.png"
                    z.writestr(name, png_bytes(pattern(alphabet, c, d)))
    return path


def expected(alphabet: str, character: int, drawer: int) -> torch.Tensor:
    """What the dataset should hold: inverted (strokes bright), scaled to [0, 1]."""
    return torch.from_numpy(255 - pattern(alphabet, character, drawer)).float() / 255


def class_examples(ds: Omniglot, name: str) -> torch.Tensor:
    return ds.examples(ds.classes.index(name))  # [n, 1, s, s]


def test_class_counts_with_and_without_rotations(tmp_path: Path) -> None:
    write_zip(tmp_path, "images_background", {"Alpha": 3, "Beta": 2}, drawers=4)
    plain = Omniglot(tmp_path, image_size=SIZE, rotations=False)
    assert plain.num_classes == 5 and len(plain) == 20
    assert plain.classes == [f"Alpha/character0{i}" for i in (1, 2, 3)] + [
        "Beta/character01",
        "Beta/character02",
    ]
    assert plain.counts.tolist() == [4] * 5
    assert (plain.alphabets, plain.num_characters, plain.num_images) == (["Alpha", "Beta"], 5, 20)
    rotated = Omniglot(tmp_path, image_size=SIZE, rotations=True)
    assert rotated.num_classes == 20 and len(rotated) == 80
    assert rotated.classes[:4] == [
        "Alpha/character01",
        "Alpha/character01/rot90",
        "Alpha/character01/rot180",
        "Alpha/character01/rot270",
    ]
    assert (rotated.num_characters, rotated.num_images) == (5, 20)
    assert rotated.data.dtype == torch.uint8 and rotated.example_shape == (1, SIZE, SIZE)


def test_overlapping_zips_are_deduplicated(tmp_path: Path) -> None:
    write_zip(tmp_path, "images_background_small1", {"Greek": 2, "Alpha": 1})
    write_zip(tmp_path, "images_background_small2", {"Greek": 2, "Beta": 3})
    ds = Omniglot(tmp_path, image_size=SIZE, rotations=False)
    assert ds.alphabets == ["Alpha", "Beta", "Greek"]
    assert ds.num_characters == 6 and ds.num_images == 24 and len(ds) == 24
    assert ds.counts.tolist() == [4] * 6  # Greek counted once, not 8 images per character
    assert [Path(s).name for s in ds.sources] == [
        "images_background_small1.zip",
        "images_background_small2.zip",
    ]


def test_images_are_decoded_inverted_in_file_order(tmp_path: Path) -> None:
    write_zip(tmp_path, "images_background", {"Alpha": 2}, drawers=3)
    ds = Omniglot(tmp_path, image_size=SIZE, rotations=False)
    for c in (1, 2):
        got = class_examples(ds, f"Alpha/character0{c}")  # [3, 1, 8, 8]
        want = torch.stack([expected("Alpha", c, d) for d in (1, 2, 3)]).unsqueeze(1)
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_resize_keeps_the_pattern(tmp_path: Path) -> None:
    pixels = np.full((105, 105), 255, np.uint8)
    pixels[:, :52] = 0  # left half black stroke
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as z:
        z.writestr("images_background/Alpha/character01/0101_01.png", png_bytes(pixels))
    ds = Omniglot(tmp_path, image_size=28, rotations=False)
    x = ds.examples(0)[0, 0]  # [28, 28]
    assert x.shape == (28, 28)
    assert float(x[:, :12].min()) > 0.95 and float(x[:, 16:].max()) < 0.05


def test_rotation_classes_are_rot90_of_the_base(tmp_path: Path) -> None:
    write_zip(tmp_path, "images_background", {"Alpha": 2})
    ds = Omniglot(tmp_path, image_size=SIZE, rotations=True)
    base = class_examples(ds, "Alpha/character02")  # [4, 1, 8, 8]
    assert not torch.equal(base, torch.rot90(base, 1, dims=(2, 3)))  # the test can fail
    for k, suffix in enumerate(("rot90", "rot180", "rot270"), start=1):
        rotated = class_examples(ds, f"Alpha/character02/{suffix}")
        torch.testing.assert_close(rotated, torch.rot90(base, k, dims=(2, 3)), rtol=0, atol=0)


def split_fixture(root: Path) -> dict[str, int]:
    alphabets = {"A": 3, "B": 5, "C": 2, "D": 4, "E": 3, "F": 6, "G": 2, "H": 5}
    write_zip(root, "images_background", alphabets, drawers=2)
    return alphabets


def test_alphabet_splits_are_disjoint_deterministic_and_complete(tmp_path: Path) -> None:
    counts = split_fixture(tmp_path)
    full = Omniglot(tmp_path, image_size=SIZE, rotations=True)
    parts = {
        s: Omniglot(tmp_path, image_size=SIZE, split=s, seed=3) for s in ("train", "val", "test")
    }
    alph = {s: set(ds.alphabets) for s, ds in parts.items()}
    assert all(alph.values())
    assert not alph["train"] & alph["val"] and not alph["train"] & alph["test"]
    assert not alph["val"] & alph["test"]
    assert set().union(*alph.values()) == set(counts)
    names = [n for ds in parts.values() for n in ds.classes]
    assert sorted(names) == sorted(full.classes) and len(names) == len(set(names))
    for ds in parts.values():  # a character and its rotations go where its alphabet goes
        assert {n.split("/")[0] for n in ds.classes} == set(ds.alphabets)
    total = sum(counts.values())
    assert parts["test"].num_characters >= 0.2 * total
    assert parts["val"].num_characters >= 0.1 * total
    again = Omniglot(tmp_path, image_size=SIZE, split="test", seed=3)
    assert again.classes == parts["test"].classes and torch.equal(again.data, parts["test"].data)
    seeds = {tuple(Omniglot(tmp_path, SIZE, split="test", seed=s).alphabets) for s in range(6)}
    assert len(seeds) > 1  # the seed changes the split


def test_standard_scheme_uses_the_evaluation_zip_as_test(tmp_path: Path) -> None:
    write_zip(tmp_path, "images_background", {"A": 3, "B": 4, "C": 3}, drawers=2)
    with pytest.raises(ValueError, match="images_evaluation.zip"):
        Omniglot(tmp_path, image_size=SIZE, split="train", split_scheme="standard")
    write_zip(tmp_path, "images_evaluation", {"X": 2, "Y": 2}, drawers=2)
    test = Omniglot(tmp_path, SIZE, rotations=False, split="test", split_scheme="standard")
    val = Omniglot(tmp_path, SIZE, rotations=False, split="val", split_scheme="standard")
    train = Omniglot(tmp_path, SIZE, rotations=False, split="train", split_scheme="standard")
    assert test.alphabets == ["X", "Y"] and test.num_characters == 4
    assert len(val.alphabets) == 1 and set(val.alphabets) | set(train.alphabets) == {"A", "B", "C"}
    assert not set(val.alphabets) & set(train.alphabets)


def test_bad_arguments_and_missing_data(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="images_background.zip"):
        Omniglot(tmp_path)
    write_zip(tmp_path, "images_background", {"A": 1})
    with pytest.raises(ValueError, match="train, val, test"):
        Omniglot(tmp_path, image_size=SIZE, split="training")
    with pytest.raises(ValueError, match="without alphabets"):  # 1 alphabet cannot be split
        Omniglot(tmp_path, image_size=SIZE, split="train")


def test_extracted_folder_gives_the_same_dataset(tmp_path: Path) -> None:
    zipped, folder = tmp_path / "zipped", tmp_path / "folder"
    zipped.mkdir()
    folder.mkdir()
    zip_path = write_zip(zipped, "images_background_small1", {"Alpha": 2, "Beta": 1})
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(folder)
    a = Omniglot(zipped, image_size=SIZE)
    b = Omniglot(folder, image_size=SIZE)
    assert a.classes == b.classes and torch.equal(a.data, b.data)
    assert Path(b.sources[0]).name == "images_background_small1"


def test_second_load_comes_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_zip(tmp_path, "images_background", {"Alpha": 2})
    first = Omniglot(tmp_path, image_size=SIZE)
    assert list((tmp_path / "cache").glob("omniglot-*.pt"))

    def refuse(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("decode_image called although the cache is warm")

    monkeypatch.setattr(omniglot_files, "decode_image", refuse)
    second = Omniglot(tmp_path, image_size=SIZE)
    assert second.classes == first.classes and torch.equal(second.data, first.data)
    with pytest.raises(DatasetError, match="cache is warm"):  # the patch is effective
        Omniglot(tmp_path, image_size=SIZE, cache=False)
    with pytest.raises(DatasetError):  # another image_size is another cache entry
        Omniglot(tmp_path, image_size=SIZE + 1)


def test_corrupt_zip_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "images_background.zip").write_bytes(b"this is not a zip archive")
    with pytest.raises(DatasetError, match="images_background.zip") as info:
        Omniglot(tmp_path)
    assert isinstance(info.value.__cause__, zipfile.BadZipFile)


@pytest.mark.parametrize("payload", ["truncated", "not_an_image"])
def test_bad_png_inside_a_valid_zip_names_zip_and_member(tmp_path: Path, payload: str) -> None:
    path = write_zip(tmp_path, "images_background", {"Alpha": 1}, drawers=2)
    good = png_bytes(pattern("Alpha", 2, 1))
    raw = good[: len(good) // 2] if payload == "truncated" else b"hello, not a PNG"
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("images_background/Alpha/character02/0201_01.png", raw)
    with pytest.raises(DatasetError) as info:
        Omniglot(tmp_path, image_size=SIZE)
    message = str(info.value)
    assert "character02/0201_01.png" in message and "images_background.zip" in message
    assert info.value.__cause__ is not None


def test_episode_sampler_draws_valid_episodes(tmp_path: Path) -> None:
    write_zip(tmp_path, "images_background", {"Alpha": 3, "Beta": 3}, drawers=5)
    ds = Omniglot(tmp_path, image_size=SIZE, rotations=True)
    ways, shots, queries = 4, 2, 3
    eps = EpisodeSampler(ds, ways=ways, shots=shots, queries=queries, seed=1).sample(6)
    assert eps.support_x.shape == (6, ways * shots, 1, SIZE, SIZE)
    assert eps.query_x.shape == (6, ways * queries, 1, SIZE, SIZE)
    assert eps.classes is not None
    for t in range(6):
        ep = eps[t]
        assert ep.classes is not None
        assert torch.bincount(ep.support_y, minlength=ways).tolist() == [shots] * ways
        assert torch.bincount(ep.query_y, minlength=ways).tolist() == [queries] * ways
        xs = torch.cat([ep.support_x, ep.query_x])  # [N*(K+Q), 1, 8, 8]
        ys = torch.cat([ep.support_y, ep.query_y])  # [N*(K+Q)]
        for x, y in zip(xs, ys, strict=True):
            members = ds.examples(int(ep.classes[y]))  # [5, 1, 8, 8]
            assert (members == x).flatten(1).all(1).any()  # x belongs to its labelled class
        assert not any(torch.equal(s, q) for s in ep.support_x for q in ep.query_x)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared Omniglot small sets not present")
def test_shared_small_sets_counts() -> None:
    ds = Omniglot(SHARED, rotations=False)
    assert (len(ds.alphabets), ds.num_characters, ds.num_images) == (8, 242, 4840)
    assert all(len(ds.alphabet_splits[s]) >= 1 for s in ("train", "val", "test"))


def test_vinyals_split_is_by_character_1100_100_423() -> None:
    from metafit.data.omniglot import _scheme_splits

    characters = [f"Alpha{a:02d}/character{c:02d}" for a in range(50) for c in range(33)][:1623]
    origins = ["images_background" if i < 964 else "images_evaluation"
               for i in range(len(characters))]
    splits = _scheme_splits(characters, origins, "vinyals", seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert set().union(*map(set, splits.values())) == set(characters)
    assert not set(splits["train"]) & set(splits["test"])
    assert splits == _scheme_splits(characters, origins, "vinyals", seed=0)
    assert splits["test"] != _scheme_splits(characters, origins, "vinyals", seed=1)["test"]
    with pytest.raises(ValueError, match="needs the full Omniglot zips"):
        _scheme_splits(characters[:300], origins[:300], "vinyals", seed=0)
