"""``train_on_val``: the model you deploy meta-trains on the validation classes too, while
the test classes stay held out (Omniglot's alphabets, an image folder's classes)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metafit.config.recipe import make_recipe
from metafit.data.omniglot import Omniglot
from metafit.data.splits import load_split
from test_omniglot import split_fixture


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path / "cache"))


def classes(recipe: dict, split: str, on_val: bool) -> set[str]:
    return set(load_split(make_recipe({**recipe, "train_on_val": on_val}, "t"), split).classes)


def test_omniglot_trains_on_the_validation_alphabets_and_holds_test_out(
        tmp_path: Path) -> None:
    split_fixture(tmp_path)
    recipe = {"dataset": "omniglot", "data_root": str(tmp_path), "image_size": 8,
              "split_seed": 3}
    plain = {s: classes(recipe, s, False) for s in ("train", "val", "test")}
    assert all(plain.values())
    assert classes(recipe, "train", True) == plain["train"] | plain["val"]
    assert classes(recipe, "val", True) == plain["val"]  # still scored on val
    assert classes(recipe, "test", True) == plain["test"]
    both = Omniglot(tmp_path, image_size=8, split=("train", "val"), seed=3)
    alphabets = both.alphabet_splits
    assert both.alphabets == sorted(alphabets["train"] + alphabets["val"])
    assert len(both.drawers) == len(both.data)  # within-alphabet episodes need drawers


def test_image_folder_trains_on_the_validation_classes(tmp_path: Path) -> None:
    root = tmp_path / "images"
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(2):
            pixels = np.full((6, 6), 20 * c + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    recipe = {"dataset": "image_folder", "data_root": str(root), "image_size": 6}
    plain = {s: classes(recipe, s, False) for s in ("train", "val", "test")}
    assert len(plain["train"]) == 6 and len(plain["val"]) == 2 and len(plain["test"]) == 2
    assert classes(recipe, "train", True) == plain["train"] | plain["val"]
    assert classes(recipe, "test", True) == plain["test"]


def test_train_on_val_is_refused_where_it_means_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="datasets split by class"):
        make_recipe({"dataset": "glyphs", "train_on_val": True}, "t")
    with pytest.raises(ValueError, match="all_classes"):
        make_recipe({"dataset": "omniglot", "split_scheme": "all_classes",
                     "train_on_val": True}, "t")
    with pytest.raises(ValueError, match="split_classes=false"):
        make_recipe({"dataset": "image_folder", "split_classes": False,
                     "train_on_val": True}, "t")
    split_fixture(tmp_path)
    with pytest.raises(ValueError, match="a union of splits"):
        Omniglot(tmp_path, image_size=8, split=("train", "val"), split_scheme="all_classes")
    with pytest.raises(ValueError, match="unknown split"):
        Omniglot(tmp_path, image_size=8, split=("train", "dev"))


def test_training_says_validation_is_not_held_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from metafit.training.build import samplers

    split_fixture(tmp_path)
    recipe = make_recipe({"dataset": "omniglot", "data_root": str(tmp_path), "image_size": 8,
                          "ways": 2, "queries": 1, "train_on_val": True}, "t")
    with caplog.at_level(logging.WARNING, logger="metafit.training.build"):
        _, _, count = samplers(recipe, 0)
    assert "not about held-out classes" in caplog.text
    alone = recipe.model_copy(update={"train_on_val": False})
    assert count == sum(len(load_split(alone, s).classes) for s in ("train", "val"))
