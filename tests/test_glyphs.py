"""Glyphs: the class list, deduplication, determinism, value range, splits, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metafit.data.base import ClassDataset
from metafit.data.glyphs import (
    DUPLICATE_BITS,
    SPLIT_FRACTIONS,
    Glyphs,
    glyph_classes,
    reference_bitmap,
    split_indices,
)
from metafit.data.sampler import EpisodeSampler


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path / "cache"))


def small(**kw: object) -> Glyphs:
    args: dict[str, object] = {"num_classes": 30, "examples_per_class": 5, "cache": False}
    args.update(kw)
    return Glyphs(**args)  # type: ignore[arg-type]


def test_class_list_is_large_unique_and_deterministic() -> None:
    classes = glyph_classes()
    assert len(classes) >= 400
    assert len(set(classes)) == len(classes)
    assert len({script for script, _ in classes}) >= 15
    assert glyph_classes.__wrapped__() == classes  # recomputed, not just memoised
    cps = {cp for _, cp in classes}
    assert ord("A") in cps and ord("a") in cps
    assert 0x0391 not in cps and 0x0410 not in cps  # Greek Alpha, Cyrillic A: dups of A
    assert ord(" ") not in cps and ord(".") not in cps


def test_no_two_classes_share_a_reference_bitmap() -> None:
    bitmaps = [reference_bitmap(cp) for _, cp in glyph_classes()]
    assert all(b is not None for b in bitmaps)
    bits = np.stack([b.reshape(-1) for b in bitmaps]).astype(np.float32)  # type: ignore[union-attr]
    ones = bits.sum(1)
    hamming = ones[:, None] + ones[None, :] - 2 * bits @ bits.T
    np.fill_diagonal(hamming, np.inf)
    assert hamming.min() > DUPLICATE_BITS
    assert len({b.tobytes() for b in bitmaps}) == len(bitmaps)  # type: ignore[union-attr]


def test_shapes_values_and_protocol() -> None:
    ds = small()
    assert isinstance(ds, ClassDataset)
    assert ds.data.shape == (150, 1, 28, 28) and ds.data.dtype == torch.uint8
    assert ds.counts.tolist() == [5] * 30
    assert len(ds.scripts) == len(ds.codepoints) == len(ds.classes) == 30
    for name, script, cp in zip(ds.classes, ds.scripts, ds.codepoints, strict=True):
        assert name == f"{script}/U+{cp:04X}"
    x = ds.gather(torch.arange(150))  # [150, 1, 28, 28]
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) <= 1.0
    assert bool((x.flatten(1).amax(1) > 0.5).all())  # every image has bright strokes
    assert float(x[:, :, 0].max()) < 0.5 and float(x[:, :, :, -1].max()) < 0.5  # margins
    # ink is roughly centred
    grid = torch.arange(28, dtype=torch.float32)
    mass = x.sum((1, 2, 3))
    cy = (x.sum((1, 3)) * grid).sum(1) / mass
    cx = (x.sum((1, 2)) * grid).sum(1) / mass
    assert float((cy - 13.5).abs().mean()) < 3.0 and float((cx - 13.5).abs().mean()) < 3.0
    other = Glyphs(image_size=20, num_classes=3, examples_per_class=2, cache=False)
    assert other.data.shape == (6, 1, 20, 20)


def test_determinism_and_seeds() -> None:
    a, b, c = small(seed=0), small(seed=0), small(seed=1)
    assert torch.equal(a.data, b.data)
    assert a.classes == c.classes  # the seed moves the distortions, not the classes
    assert not torch.equal(a.data, c.data)
    # examples of a class are the same whatever else is built
    few = small(num_classes=10)
    assert set(few.classes) <= set(a.classes)
    for c_id, name in enumerate(few.classes):
        assert torch.equal(few.examples(c_id), a.examples(a.classes.index(name)))
    # examples of one class differ from each other (distortions), classes from each other
    ex = a.examples(0)
    assert not torch.equal(ex[0], ex[1])


def test_splits_are_disjoint_and_complete() -> None:
    n = len(glyph_classes())
    parts = {s: split_indices(n, s) for s in ("train", "val", "test")}
    sets = {s: set(p.tolist()) for s, p in parts.items()}
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert sets["train"] | sets["val"] | sets["test"] == set(range(n))
    for s, frac in zip(("train", "val", "test"), SPLIT_FRACTIONS, strict=True):
        assert abs(len(sets[s]) - frac * n) <= 1
    assert sorted(split_indices(n, None).tolist()) == list(range(n))
    everything = glyph_classes()
    test_names = {f"{everything[i][0]}/U+{everything[i][1]:04X}" for i in sets["test"]}
    ds = small(split="test", num_classes=8, examples_per_class=1)
    assert len(ds.classes) == 8 and set(ds.classes) <= test_names and ds.split == "test"


def test_cache_round_trip(tmp_path: Path) -> None:
    built = small(num_classes=6, examples_per_class=3, cache=True)
    files = list((tmp_path / "cache").glob("glyphs-*.pt"))
    assert len(files) == 1
    loaded = small(num_classes=6, examples_per_class=3, cache=True)
    assert torch.equal(built.data, loaded.data) and built.classes == loaded.classes
    small(num_classes=6, examples_per_class=3, cache=True, seed=5)
    assert len(list((tmp_path / "cache").glob("glyphs-*.pt"))) == 2  # seed is in the key


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        Glyphs(split="training", cache=False)
    with pytest.raises(ValueError, match="num_classes"):
        Glyphs(num_classes=0, cache=False)
    with pytest.raises(ValueError, match="num_classes"):
        Glyphs(num_classes=10**6, cache=False)
    with pytest.raises(ValueError, match="image_size"):
        Glyphs(image_size=0, cache=False)


def test_episode_sampler() -> None:
    ds = small()
    eps = EpisodeSampler(ds, ways=5, shots=1, queries=3, seed=0).sample(4)
    assert eps.support_x.shape == (4, 5, 1, 28, 28) and eps.query_x.shape == (4, 15, 1, 28, 28)
