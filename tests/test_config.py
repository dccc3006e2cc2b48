"""Recipes: shipped YAML, inheritance, overrides, and the errors users see."""

from __future__ import annotations

from pathlib import Path

import pytest

from metafit.config.recipe import RecipeError, list_recipes, load_recipe, parse_overrides
from metafit.config.schema import Recipe, make_recipe


def test_every_shipped_recipe_loads_and_validates() -> None:
    names = list_recipes()
    assert "sinusoid_maml" in names and "omniglot_5w1s_maml" in names
    assert not any(n.startswith("_") for n in names)
    for name in names:
        assert isinstance(load_recipe(name), Recipe)


def test_omniglot_recipes_carry_the_papers_hyperparameters() -> None:
    five = load_recipe("omniglot_5w1s_maml")
    assert (five.ways, five.shots, five.inner_lr, five.inner_steps, five.eval_inner_steps,
            five.meta_batch, five.outer_lr) == (5, 1, 0.4, 1, 3, 32, 1e-3)
    twenty = load_recipe("omniglot_20w5s_maml")
    assert (twenty.ways, twenty.shots, twenty.inner_lr, twenty.inner_steps,
            twenty.meta_batch) == (20, 5, 0.1, 5, 16)
    algos = {load_recipe(f"omniglot_{s}_{a}").algorithm
             for s in ("5w1s", "5w5s", "20w1s", "20w5s")
             for a in ("maml", "fomaml", "metasgd", "anil", "reptile", "protonet", "finetune")}
    assert len(algos) == 7


def test_overrides_are_typed() -> None:
    r = load_recipe("omniglot_5w1s_maml", ["inner_steps=5", "outer_lr=1e-4", "grad_clip=null",
                                           "first_order=true", "data_root=/tmp/x"])
    assert r.inner_steps == 5 and r.outer_lr == pytest.approx(1e-4)
    assert r.grad_clip is None and r.first_order is True and r.data_root == "/tmp/x"


def test_unknown_key_names_it_and_the_nearest() -> None:
    with pytest.raises(RecipeError, match=r"unknown recipe key 'inner_step'.*inner_steps"):
        load_recipe("sinusoid_maml", ["inner_step=3"])
    with pytest.raises(RecipeError, match="not of the form key=value"):
        parse_overrides(["inner_steps"])


def test_bad_values_name_the_key() -> None:
    with pytest.raises(RecipeError, match=r"ways: .*greater than 0"):
        load_recipe("sinusoid_maml", ["ways=0"])
    with pytest.raises(RecipeError, match=r"inner_lr"):
        load_recipe("sinusoid_maml", ["inner_lr=abc"])


def test_unknown_recipe_suggests_names() -> None:
    with pytest.raises(RecipeError, match=r"sinusoid_maml"):
        load_recipe("sinusoid_mam")


def test_yaml_file_with_base_and_unknown_key(tmp_path: Path) -> None:
    good = tmp_path / "mine.yaml"
    good.write_text("base: sinusoid_maml\ninner_steps: 3\n")
    r = load_recipe(good)
    assert r.inner_steps == 3 and r.dataset == "sinusoid" and r.name == "mine"
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: sinusoid_maml\nmeta_bach: 3\n")
    with pytest.raises(RecipeError, match=r"unknown recipe key 'meta_bach'.*meta_batch"):
        load_recipe(bad)
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\n")
    with pytest.raises(RecipeError, match="inherits from itself"):
        load_recipe(loop)
    broken = tmp_path / "broken.yaml"
    broken.write_text("ways: [1,\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(broken)


def test_protonet_distance_is_a_recipe_key() -> None:
    from metafit.algorithms.from_recipe import build_algorithm

    base = dict(name="x", dataset="sinusoid", model="mlp")
    with pytest.raises(ValueError, match="distance='cosine' applies to protonet"):
        build_algorithm(make_recipe(dict(base, algorithm="maml", distance="cosine")))
    with pytest.raises(ValueError, match="distance"):
        make_recipe(dict(base, algorithm="protonet", distance="manhattan"))
    with pytest.raises(ValueError, match="distance_scale"):
        make_recipe(dict(base, algorithm="protonet", distance_scale=0))
    recipe = make_recipe(dict(base, dataset="omniglot", model="conv4", algorithm="protonet",
                              distance="cosine", distance_scale=20.0, hidden=8))
    algo = build_algorithm(recipe)
    assert (algo.distance, algo.scale) == ("cosine", 20.0)


def test_a_bad_override_is_blamed_on_the_override_not_the_file(tmp_path) -> None:
    from metafit.config.recipe import RecipeError, load_recipe

    pattern = r"invalid value in the overrides \(ways\): ways: .*'abc'"
    with pytest.raises(RecipeError, match=pattern) as err:
        load_recipe("sinusoid_maml", ["ways=abc"])
    assert ".yaml" not in str(err.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: sinusoid_maml\nways: 0\n")
    with pytest.raises(RecipeError, match="invalid values in .*bad.yaml"):  # the file's own
        load_recipe(str(bad), ["inner_lr=0.1"])
