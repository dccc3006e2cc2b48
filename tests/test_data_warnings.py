"""`metafit data` warns, in text and in --json, when a split cannot give the recipe's
tasks: fewer classes than ways, or classes with fewer examples than shots + queries."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from metafit.cli.main import main
from metafit.config.recipe import load_recipe
from metafit.data.splits import split_warnings
from test_trainer import image_folder


def test_a_five_class_folder_warns_about_its_one_class_splits(tmp_path: Path, capsys) -> None:
    root = image_folder(tmp_path / "five", classes=5, per_class=4)
    args = ["data", "omniglot_5w1s_maml", "dataset=image_folder", f"data_root={root}",
            "image_size=8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"dataset: image_folder ({root})" in out
    assert "  val: 1 classes, 4 examples" in out
    assert "warning: train: 3 class(es), fewer than the 5 ways of a task" in out
    assert "warning: val: 1 class(es), fewer than the 5 ways" in out
    assert "warning: test: 1 class(es)" in out
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["classes"] for s in data["splits"]] == [3, 1, 1]
    assert len(data["warnings"]) == 3 and data["warnings"][1].startswith("val: 1 class(es)")
    fits = ["data", "omniglot_5w1s_maml", "dataset=image_folder", f"data_root={root}",
            "split_classes=false", "ways=2", "test_queries=3", "--json"]
    assert main(fits) == 0
    assert json.loads(capsys.readouterr().out)["warnings"] == []


def test_short_classes_are_counted_against_each_splits_own_episodes() -> None:
    recipe = load_recipe("omniglot_5w1s_maml", ["shots=1", "queries=2", "test_shots=5",
                                                "test_queries=5", "ways=3", "test_ways=2"])
    counts = torch.tensor([3, 3, 3, 2, 10])  # [C]
    assert split_warnings(recipe, "train", counts) == [
        "train: 1 of 5 classes have fewer than shots + queries = 1 + 2 = 3 examples and are "
        "never drawn"]
    assert split_warnings(recipe, "test", counts) == [
        "test: 4 of 5 classes have fewer than shots + queries = 5 + 5 = 10 examples; only 1 "
        "can be drawn, fewer than the 2 ways of a task: no test episode can be drawn"]
    assert split_warnings(recipe, "val", torch.tensor([10, 10])) == []
