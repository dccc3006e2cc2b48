"""Meta-RL recipes: the shipped ones, and the keys each kind of recipe may set."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from metafit.config.recipe import RecipeError, load_recipe
from metafit.config.schema import OUTER_STEP_KEYS, RL_KEYS, Recipe, make_recipe, recipe_to_yaml
from metafit.rl import Bandit, CategoricalMLPPolicy, GaussianMLPPolicy, Nav2d, TabularMDP
from metafit.rl.from_recipe import build_family, build_rl_algorithm, promp_settings, trpo_settings
from metafit.rl.pendulum import Pendulum
from metafit.rl.promp import ProMPSettings

RL_RECIPES = ("rl_nav2d_maml", "rl_nav2d_fomaml", "rl_bandit_maml", "rl_tabular_maml",
              "rl_pendulum_maml", "rl_nav2d_reptile", "rl_nav2d_pretrained",
              "rl_nav2d_scratch", "rl_nav2d_promp")


def test_the_nav2d_recipe_is_the_reference_configuration() -> None:
    r = load_recipe("rl_nav2d_maml")
    assert r.is_rl and not r.rl_first_order
    assert (r.meta_batch, r.trajectories, r.horizon, r.inner_lr, r.inner_steps, r.max_kl,
            r.iterations) == (20, 20, 100, 0.1, 1, 0.01, 500)
    fo = load_recipe("rl_nav2d_fomaml")
    assert fo.rl_first_order and fo.algorithm == "fomaml_trpo"
    assert fo.model_dump(exclude={"name", "description", "algorithm"}) == \
        r.model_dump(exclude={"name", "description", "algorithm"})


def test_the_paper_nav2d_recipe_normalises_actions_and_changes_only_that() -> None:
    """rl_nav2d_maml_paper is the reference recipe with the authors' released settings:
    the policy in units of the action bound (0.1 for navigation), inner rate 0.5."""
    r, ref = load_recipe("rl_nav2d_maml_paper"), load_recipe("rl_nav2d_maml")
    ignore = {"name", "description"}
    differ = {k for k, v in r.model_dump(exclude=ignore).items() if getattr(ref, k) != v}
    assert differ == {"normalize_actions", "inner_lr", "inner_lr_decay", "iterations"}
    assert (r.normalize_actions, r.inner_lr, r.inner_lr_decay, r.iterations) == (
        True, 0.5, 0.5, 100)
    assert build_rl_algorithm(r).rates_at(1).lr == pytest.approx(0.25)
    policy = build_rl_algorithm(r).policy
    assert isinstance(policy, GaussianMLPPolicy)
    assert (policy.action_center, policy.action_scale) == (0.0, pytest.approx(0.1))
    assert build_rl_algorithm(ref).policy.action_scale == 1.0
    obs = torch.zeros(1, 2)
    assert float(policy.split(policy(obs).detach())[1][0, 0]) == pytest.approx(math.log(0.1))


def test_normalize_actions_is_refused_for_discrete_actions_and_supervised_recipes() -> None:
    with pytest.raises(ValueError, match="normalize_actions applies to continuous"):
        build_rl_algorithm(load_recipe("rl_bandit_maml", ["normalize_actions=true"]))
    with pytest.raises(RecipeError, match="normalize_actions"):
        load_recipe("omniglot_5w1s_maml", ["normalize_actions=true"])


@pytest.mark.parametrize("name,algorithm,changed", [
    ("rl_nav2d_pretrained", "pretrained_trpo", set()),
    ("rl_nav2d_scratch", "scratch", set()),
    ("rl_nav2d_reptile", "reptile_pg", {"inner_steps", "outer_lr"}),
    ("rl_nav2d_promp", "promp", {"inner_objective", "clip_eps"})])
def test_the_nav2d_baselines_and_reptile_change_only_their_own_keys(
        name: str, algorithm: str, changed: set[str]) -> None:
    """Each is the reference configuration with its algorithm (and Reptile's own keys):
    the same tasks, trajectories, policy, inner rate and evaluation steps."""
    r, ref = load_recipe(name), load_recipe("rl_nav2d_maml")
    ignore = {"name", "description", "algorithm"}
    differ = {k for k, v in r.model_dump(exclude=ignore).items() if getattr(ref, k) != v}
    assert r.algorithm == algorithm and differ == changed
    assert r.eval_inner_steps == 3 and r.inner_lr == ref.inner_lr


def test_outer_lr_is_reptiles_and_promps_alone_among_rl_algorithms() -> None:
    assert load_recipe("rl_nav2d_reptile", ["outer_lr=0.1"]).outer_lr == 0.1
    assert load_recipe("rl_nav2d_promp", ["outer_lr=0.01"]).outer_lr == 0.01
    with pytest.raises(RecipeError, match=r"outer_lr is reptile_pg's outer step size "
                                          r"\(promp's Adam rate\); algorithm 'maml_trpo' "
                                          r"does not use it \(its outer step: a TRPO step"):
        load_recipe("rl_nav2d_maml", ["outer_lr=0.1"])
    with pytest.raises(RecipeError, match=r"algorithm 'scratch' does not use it"):
        load_recipe("rl_nav2d_reptile", ["algorithm=scratch"])


@pytest.mark.parametrize("name,override,owner", [
    ("rl_nav2d_maml", "clip_eps=0.3", "promp"), ("rl_nav2d_maml", "ppo_steps=3", "promp"),
    ("rl_nav2d_pretrained", "inner_kl_penalty=0.01", "promp"),
    ("rl_nav2d_reptile", "ppo_steps=2", "promp"),
    ("rl_nav2d_promp", "max_kl=0.02", "maml_trpo, fomaml_trpo, pretrained_trpo"),
    ("rl_nav2d_promp", "cg_iters=3", "maml_trpo, fomaml_trpo, pretrained_trpo"),
    ("rl_nav2d_reptile", "ls_max_steps=4", "maml_trpo, fomaml_trpo, pretrained_trpo")])
def test_each_outer_step_refuses_the_others_keys(name: str, override: str, owner: str
                                                 ) -> None:
    key = override.split("=")[0]
    algorithm = load_recipe(name).algorithm
    with pytest.raises(RecipeError, match=rf"{key} is a key of {owner}; algorithm "
                                          rf"'{algorithm}' does not use it"):
        load_recipe(name, [override])
    assert OUTER_STEP_KEYS[algorithm] and key not in OUTER_STEP_KEYS[algorithm]


def test_promp_keys_and_the_lvc_inner_loss() -> None:
    r = load_recipe("rl_nav2d_promp")
    assert (r.algorithm, r.rl_inner_objective, r.clip_eps, r.ppo_steps, r.inner_kl_penalty,
            r.outer_lr, r.inner_lr) == ("promp", "lvc", 0.3, 5, 5e-4, 1e-3, 0.1)
    assert build_rl_algorithm(r).inner_objective == "lvc"
    assert promp_settings(r) == ProMPSettings(0.3, 5, 5e-4, 1e-3)
    # the default inner loss: promp's own is LVC, every other algorithm's REINFORCE
    assert load_recipe("rl_nav2d_maml", ["algorithm=promp"]).rl_inner_objective == "lvc"
    assert load_recipe("rl_nav2d_maml").rl_inner_objective == "vpg"
    lvc_maml = load_recipe("rl_nav2d_maml", ["inner_objective=lvc"])  # LVC-MAML-TRPO
    assert build_rl_algorithm(lvc_maml).inner_objective == "lvc"
    mamlppo = load_recipe("rl_nav2d_promp", ["inner_objective=vpg"])  # MAML-PPO
    assert build_rl_algorithm(mamlppo).inner_objective == "vpg"
    for name, extra in (("rl_nav2d_fomaml", []), ("rl_nav2d_reptile", []),
                        ("rl_nav2d_pretrained", []), ("rl_nav2d_maml", ["first_order=true"])):
        with pytest.raises(RecipeError, match=r"inner_objective 'lvc' changes only the "
                                              r"second-order meta-gradient"):
            load_recipe(name, ["inner_objective=lvc", *extra])
    with pytest.raises(RecipeError, match=r"clip_eps"):
        load_recipe("rl_nav2d_promp", ["clip_eps=1.5"])


@pytest.mark.parametrize("name,family,policy", [
    ("rl_nav2d_maml", Nav2d, GaussianMLPPolicy), ("rl_bandit_maml", Bandit, CategoricalMLPPolicy),
    ("rl_tabular_maml", TabularMDP, CategoricalMLPPolicy),
    ("rl_pendulum_maml", Pendulum, GaussianMLPPolicy)])
def test_each_rl_recipe_builds_its_family_policy_and_trpo(name: str, family: type,
                                                          policy: type) -> None:
    r = load_recipe(name)
    fam = build_family(r)
    assert isinstance(fam, family) and fam.horizon == r.horizon
    algo = build_rl_algorithm(r, fam)
    assert isinstance(algo.policy, policy) and algo.inner_lr == r.inner_lr
    assert trpo_settings(r).max_kl == r.max_kl
    again = build_rl_algorithm(r, fam)  # seeded: the same initial policy
    for (n, p), (_, q) in zip(algo.state_dict().items(), again.state_dict().items(),
                              strict=True):
        assert bool((p == q).all()), n


def test_every_dataset_is_supervised_or_a_task_family() -> None:
    from typing import get_args

    from metafit.config import schema

    names = get_args(Recipe.model_fields["dataset"].annotation)
    assert sorted(names) == sorted(schema.SUPERVISED_DATASETS + schema.RL_DATASETS)
    assert not set(schema.SUPERVISED_DATASETS) & set(schema.RL_DATASETS)


def test_a_family_horizon_defaults_to_the_familys_own() -> None:
    r = make_recipe({"dataset": "rl_bandit", "algorithm": "maml_trpo", "arms": 3})
    assert r.horizon is None and build_family(r).horizon == Bandit().horizon
    assert build_family(r).action_space.dim == 3


@pytest.mark.parametrize("override,owner", [
    ("horizon=5", "meta-RL recipes"), ("trajectories=20", "meta-RL recipes"),
    ("max_kl=0.01", "meta-RL recipes")])
def test_rl_keys_are_refused_on_a_supervised_recipe(override: str, owner: str) -> None:
    with pytest.raises(RecipeError, match=rf"'{override.split('=')[0]}' in the overrides is "
                                          rf"for {owner}.*'sinusoid' is supervised"):
        load_recipe("sinusoid_maml", [override])  # even at the default value


@pytest.mark.parametrize("override", ["ways=5", "model=mlp", "optimizer=adam",
                                      "weight_decay=0.1"])
def test_supervised_keys_are_refused_on_an_rl_recipe(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(RecipeError, match=rf"'{key}' in the overrides is for supervised "
                                          r"recipes only; dataset 'rl_nav2d' is a meta-RL"):
        load_recipe("rl_nav2d_maml", [override])


def test_family_keys_are_refused_on_other_families(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"'arms' in the overrides is for dataset "
                                          r"rl_bandit only"):
        load_recipe("rl_nav2d_maml", ["arms=3"])
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: rl_bandit_maml\nstates: 4\n")
    with pytest.raises(RecipeError, match=rf"'states' in {mine} is for dataset rl_tabular"):
        load_recipe(mine)
    with pytest.raises(RecipeError, match=r"'mass_range' in the overrides is for dataset "
                                          r"rl_pendulum only"):
        load_recipe("rl_tabular_maml", ["mass_range=[0.5,2.0]"])  # even at the default


def test_the_pendulum_recipe_sets_its_task_ranges() -> None:
    r = load_recipe("rl_pendulum_maml", ["mass_range=[0.8,1.2]", "length_range=[1.0,1.0]"])
    family = build_family(r)
    assert isinstance(family, Pendulum) and family.horizon == 200
    assert family.mass_range == (0.8, 1.2) and family.length_range == (1.0, 1.0)
    assert family.obs_dim == 3 and family.action_space.dim == 1
    with pytest.raises(RecipeError, match=r"length_range must be \[low, high\] with 0 < low"):
        load_recipe("rl_pendulum_maml", ["length_range=[2.0,1.0]"])
    with pytest.raises(RecipeError, match=r"mass_range"):
        load_recipe("rl_pendulum_maml", ["mass_range=[0.0,1.0]"])


def test_recipe_files_name_the_file_of_a_foreign_key(tmp_path: Path) -> None:
    sup = tmp_path / "sup.yaml"
    sup.write_text("base: sinusoid_maml\ngamma: 0.9\n")
    with pytest.raises(RecipeError, match=rf"'gamma' in {sup} is for meta-RL"):
        load_recipe(sup)
    # switching a recipe's dataset leaves its file's keys foreign
    with pytest.raises(RecipeError, match=r"'horizon' in .*rl_nav2d_maml.yaml is for meta-RL"):
        load_recipe("rl_nav2d_maml", ["dataset=sinusoid"])


def test_values_built_in_code_are_checked_too() -> None:
    with pytest.raises(RecipeError, match=r"key 'shots' is for supervised recipes"):
        make_recipe({"dataset": "rl_tabular", "shots": 3})
    with pytest.raises(RecipeError, match=r"key 'gae_lambda' is for meta-RL"):
        make_recipe({"dataset": "glyphs", "gae_lambda": 0.9})
    with pytest.raises(RecipeError, match=r"algorithm 'protonet' is not a meta-RL "
                                          r"algorithm.*maml_trpo, fomaml_trpo"):
        make_recipe({"dataset": "rl_nav2d", "algorithm": "protonet"})
    with pytest.raises(RecipeError, match=r"algorithm 'maml' is not a meta-RL"):
        make_recipe({"dataset": "rl_nav2d"})  # the supervised default: name it
    with pytest.raises(RecipeError, match=r"run on the CPU"):
        make_recipe({"dataset": "rl_nav2d", "algorithm": "maml_trpo", "device": "cuda"})
    with pytest.raises(RecipeError, match=r"policy_hidden"):
        make_recipe({"dataset": "rl_nav2d", "algorithm": "maml_trpo",
                     "policy_hidden": [8, 0]})
    with pytest.raises(RecipeError, match=r"gamma"):
        load_recipe("rl_nav2d_maml", ["gamma=1.5"])


def test_a_supervised_recipe_dumps_and_validates_as_before() -> None:
    sup = load_recipe("omniglot_5w1s_maml")
    written = yaml.safe_load(recipe_to_yaml(sup))
    assert not set(written) & set(RL_KEYS)
    assert list(written) == [k for k in Recipe.model_fields if k not in RL_KEYS]
    # a full model_dump round trip (what tuning does) still validates, both kinds
    assert make_recipe(sup.model_dump()) == sup
    rl = load_recipe("rl_bandit_maml")
    assert make_recipe(rl.model_dump()) == rl


@pytest.mark.parametrize("name", RL_RECIPES)
def test_an_rl_recipe_dumps_only_its_own_keys_and_reads_back(name: str) -> None:
    r = load_recipe(name)
    written = yaml.safe_load(recipe_to_yaml(r))
    assert "ways" not in written and "model" not in written and "optimizer" not in written
    assert ("arms" in written) == (r.dataset == "rl_bandit")
    assert make_recipe(written) == r


@pytest.mark.parametrize("changes, message", [
    ({"horizon": 10**9}, r"horizon: Input should be less than or equal to 100000"),
    ({"trajectories": 10**9}, r"trajectories: Input should be less than or equal to 100000"),
    ({"test_episodes": 10**9}, r"test_episodes: Input should be less than or equal to"),
    ({"horizon": 10_000, "trajectories": 100, "meta_batch": 20},  # 2e7 steps held at once
     r"horizon x trajectories x meta_batch = 20,000,000 environment steps"),
    ({"policy_hidden": [64] * 17}, "policy_hidden must be at most 16 widths"),
    ({"policy_hidden": [100_000]}, "policy_hidden must be at most 16 widths of at most 4096"),
])
def test_a_forged_rl_config_cannot_choose_unbounded_memory(changes: dict,
                                                           message: str) -> None:
    values = {**load_recipe("rl_nav2d_maml").applicable_dump(), **changes}
    with pytest.raises(RecipeError, match=message):
        make_recipe(values, "config.yaml")


def test_a_tabular_mdp_table_is_bounded() -> None:
    values = load_recipe("rl_tabular_maml").applicable_dump()
    with pytest.raises(RecipeError, match=r"states x states x actions = 50,000,000"):
        make_recipe({**values, "states": 1000, "actions": 50}, "config.yaml")
    assert make_recipe({**values, "states": 100, "actions": 10}, "config.yaml").states == 100
