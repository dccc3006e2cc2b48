"""split_scheme: all_classes: every class in every split, each class's examples divided
between train, val and test (disjoint, deterministic, by class name), for image folders,
tables, texts and Omniglot (a drawing's rotations follow it); the recipe checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metafit.config.recipe import RecipeError, load_recipe
from metafit.data.holdout import holdout_examples, holdout_sizes
from metafit.data.omniglot import Omniglot
from metafit.data.splits import load_split
from metafit.data.text_csv import TextCSV
from table_fixtures import write_jsonl
from test_omniglot import write_zip
from test_trainer import image_folder

SPLITS = ("train", "val", "test")


def test_holdout_sizes_keep_one_for_training_and_round_half_up() -> None:
    assert holdout_sizes(20, 0.2) == (16, 2, 2)
    assert holdout_sizes(20, 0.5) == (10, 5, 5)
    assert holdout_sizes(10, 0.25) == (7, 2, 1)  # 2.5 held -> 3: val gets the odd one
    assert holdout_sizes(1, 0.9) == (1, 0, 0) and holdout_sizes(2, 0.9) == (1, 1, 0)
    assert holdout_sizes(0, 0.5) == (0, 0, 0)


def test_holdout_examples_partition_each_class_by_its_name() -> None:
    counts = torch.tensor([20, 5, 1])  # [C]
    parts = {s: holdout_examples(["a", "b", "c"], counts, s, 7, 0.2).tolist() for s in SPLITS}
    assert sorted(sum(parts.values(), [])) == list(range(26))  # every example once
    assert [sum(i < 20 for i in parts[s]) for s in SPLITS] == [16, 2, 2]
    assert parts["train"][-1] == 25  # class c's only example stays in training
    alone = holdout_examples(["b"], torch.tensor([5]), "val", 7, 0.2).tolist()
    assert [i + 20 for i in alone] == [i for i in parts["val"] if 20 <= i < 25]
    assert parts["val"] != holdout_examples(["a", "b", "c"], counts, "val", 8, 0.2).tolist()
    with pytest.raises(ValueError, match="unknown split"):
        holdout_examples(["a"], torch.tensor([3]), "dev", 0, 0.2)


def rows(ds: object) -> set[bytes]:
    data = ds.data  # type: ignore[attr-defined]
    return {bytes(x.flatten().tolist()) for x in data}


def test_an_image_folder_recipe_meta_trains_on_every_class(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "five", classes=5, per_class=10)
    recipe = load_recipe("omniglot_5w1s_maml", [
        "dataset=image_folder", f"data_root={root}", "image_size=8",
        "split_scheme=all_classes", "holdout_fraction=0.4"])
    parts = [load_split(recipe, s) for s in SPLITS]
    assert all(p.classes == [f"class{c:02d}" for c in range(5)] for p in parts)
    assert [p.counts.tolist() for p in parts] == [[6] * 5, [2] * 5, [2] * 5]
    seen = [rows(p) for p in parts]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert len(seen[0] | seen[1] | seen[2]) == 50


def test_tables_and_texts_split_by_example(tmp_path: Path) -> None:
    image_folder(tmp_path / "imgs", classes=3, per_class=6)
    write_jsonl(tmp_path / "imgs" / "t.jsonl", [
        {"image": f"class{c:02d}/{i}.png", "label": f"c{c}"} for c in range(3) for i in range(6)])
    recipe = load_recipe("omniglot_5w1s_maml", [
        "dataset=image_table", f"data_root={tmp_path / 'imgs' / 't.jsonl'}", "image_size=8",
        "label_column=label", "split_scheme=all_classes", "holdout_fraction=0.34"])
    assert [load_split(recipe, s).counts.tolist() for s in SPLITS] == \
        [[4] * 3, [1] * 3, [1] * 3]
    write_jsonl(tmp_path / "t.jsonl", [{"text": f"t{i}", "category": "ab"[i % 2]}
                                       for i in range(8)])
    text = TextCSV(tmp_path / "t.jsonl")
    parts = [text.take(holdout_examples(text.classes, text.counts, s, 0, 0.5)) for s in SPLITS]
    assert [p.counts.tolist() for p in parts] == [[2, 2], [1, 1], [1, 1]]
    assert sorted(t for p in parts for t in p.texts) == sorted(text.texts)
    assert all(p.labels[i] == text.labels[text.texts.index(t)]
               for p in parts for i, t in enumerate(p.texts))


def test_omniglot_all_classes_keeps_every_character_and_rotation(tmp_path: Path) -> None:
    write_zip(tmp_path, "images_background_small1", {"Greek": 2, "Latin": 1}, drawers=4)
    parts = [Omniglot(tmp_path, image_size=8, split=s, split_scheme="all_classes",
                      holdout=0.5, seed=3) for s in SPLITS]
    full = Omniglot(tmp_path, image_size=8, rotations=False)
    for part in parts:  # 3 characters x 4 rotations in every split, 2 alphabets of 2
        assert len(part.classes) == 12 and part.alphabets == ["Greek", "Latin"]
    assert [p.counts.tolist() for p in parts] == [[2] * 12, [1] * 12, [1] * 12]
    assert [p.num_images for p in parts] == [6, 3, 3]
    base = [rows(p.subset([c for c, n in enumerate(p.classes) if "/rot" not in n]))
            for p in parts]
    assert not (base[0] & base[1] or base[1] & base[2]) and base[0] | base[1] | base[2] \
        == rows(full)
    val = parts[1]
    upright = val.examples(val.classes.index("Greek/character01"))  # [1, 1, 8, 8]
    turned = val.examples(val.classes.index("Greek/character01/rot90"))
    assert torch.equal(torch.rot90(upright, 1, dims=(2, 3)), turned)  # the same drawing


def test_all_classes_recipe_checks() -> None:
    with pytest.raises(RecipeError, match="split_scheme 'all_classes' is for datasets"):
        load_recipe("sinusoid_maml", ["split_scheme=all_classes"])
    with pytest.raises(RecipeError, match="split_classes=false would add"):
        load_recipe("omniglot_5w1s_maml", ["split_scheme=all_classes", "split_classes=false"])
    with pytest.raises(RecipeError, match="class_split counts classes"):
        load_recipe("_banking77", ["split_scheme=all_classes"])  # it sets class_split
    with pytest.raises(RecipeError, match="holdout_fraction"):
        load_recipe("omniglot_5w1s_maml", ["holdout_fraction=1"])
    with pytest.raises(RecipeError, match="split_scheme"):
        load_recipe("omniglot_5w1s_maml", ["split_scheme=everything"])
    ok = load_recipe("_banking77", ["split_scheme=all_classes", "class_split=null"])
    assert ok.split_scheme == "all_classes" and ok.holdout_fraction == 0.2


def test_a_run_meta_trains_and_validates_on_every_class(tmp_path: Path) -> None:
    from metafit.training.trainer import Trainer
    from test_trainer import classification_recipe

    root = image_folder(tmp_path / "data", classes=4, per_class=10)
    recipe = classification_recipe(root, "protonet", split_scheme="all_classes",
                                   holdout_fraction=0.6, iterations=2, val_every=2)
    Trainer(recipe, tmp_path / "run", progress=False).fit()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    val = [json.loads(line) for line in lines if '"split": "val"' in line]
    assert len(val) == 1 and 0.0 <= val[0]["accuracy"] <= 1.0  # validated at iteration 2
