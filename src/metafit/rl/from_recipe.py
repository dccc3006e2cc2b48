"""Build what a meta-RL recipe describes: its task family, its policy and its learner
(MAML-TRPO, Reptile, ProMP or a baseline; the counterpart of
:mod:`metafit.algorithms.from_recipe` for the ``rl_*`` datasets). The Gymnasium families
(``rl_cheetah_vel``, ``rl_cheetah_dir``, ``rl_gym``) import Gymnasium only when a recipe
asks for them."""

from __future__ import annotations

import math
from typing import Any

import torch

from metafit.config.schema import GYM_RL_DATASETS, Recipe
from metafit.rl.bandit import Bandit
from metafit.rl.env import MDPFamily
from metafit.rl.maml import MAMLRL
from metafit.rl.nav2d import Nav2d
from metafit.rl.pendulum import Pendulum
from metafit.rl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, Policy
from metafit.rl.promp import ProMPSettings
from metafit.rl.tabular import TabularMDP
from metafit.rl.trpo import TRPOSettings

__all__ = ["build_family", "build_policy", "build_rl_algorithm", "promp_settings",
           "trpo_settings"]


def build_family(recipe: Recipe) -> MDPFamily:
    """The recipe's task family, with its ``horizon`` where set (else the family's own:
    navigation 100, bandits and tabular MDPs 10, pendulums 200).

    Raises:
        ValueError: the recipe's dataset is not a meta-RL family.
    """
    options: dict[str, Any] = {} if recipe.horizon is None else {"horizon": recipe.horizon}
    if recipe.dataset == "rl_nav2d":
        return Nav2d(**options)
    if recipe.dataset == "rl_bandit":
        return Bandit(arms=recipe.arms, **options)
    if recipe.dataset == "rl_tabular":
        return TabularMDP(states=recipe.states, actions=recipe.actions, **options)
    if recipe.dataset == "rl_pendulum":
        return Pendulum(mass_range=recipe.mass_range, length_range=recipe.length_range,
                        **options)
    if recipe.dataset in GYM_RL_DATASETS:
        return _gym_family(recipe, options)
    raise ValueError(f"dataset '{recipe.dataset}' is not a meta-RL task family")


def _gym_family(recipe: Recipe, options: dict[str, Any]) -> MDPFamily:
    """A Gymnasium-backed family (needs the ``rl`` extra)."""
    try:
        from metafit.rl import gym_family
    except ImportError as error:
        raise ValueError(f"dataset '{recipe.dataset}' runs MuJoCo / Gymnasium environments: "
                         f"pip install 'metafit[rl]' ({error})") from error
    if recipe.dataset == "rl_cheetah_vel":
        return gym_family.half_cheetah_vel(**options)
    if recipe.dataset == "rl_cheetah_dir":
        return gym_family.half_cheetah_dir(**options)
    assert recipe.env_factory is not None and recipe.task_ranges is not None
    assert recipe.horizon is not None
    factory = gym_family.load_env_factory(recipe.env_factory)
    return gym_family.GymTaskFamily(factory, gym_family.uniform_tasks(recipe.task_ranges),
                                    recipe.horizon, name=recipe.env_factory)


def build_policy(recipe: Recipe, family: MDPFamily) -> Policy:
    """A freshly initialised policy for ``family``'s spaces (Gaussian for continuous
    actions, categorical for discrete ones), its weights drawn from a generator seeded
    with ``recipe.seed`` (torch's global stream is left alone)."""
    generator = torch.Generator().manual_seed(recipe.seed)
    space = family.action_space
    if space.kind == "continuous":
        center, scale = 0.0, 1.0
        if recipe.normalize_actions:
            if space.low is None or space.high is None or not (
                    math.isfinite(space.low) and math.isfinite(space.high)
                    and space.low < space.high):
                raise ValueError(f"normalize_actions needs finite action bounds, but the "
                                 f"{recipe.dataset} family's are [{space.low}, {space.high}]")
            center, scale = (space.low + space.high) / 2, (space.high - space.low) / 2
        return GaussianMLPPolicy(family.obs_dim, space.dim, hidden=recipe.policy_hidden,
                                 nonlinearity=recipe.policy_activation, generator=generator,
                                 action_center=center, action_scale=scale)
    if recipe.normalize_actions:
        raise ValueError(f"normalize_actions applies to continuous actions; the "
                         f"{recipe.dataset} family's are discrete")
    return CategoricalMLPPolicy(family.obs_dim, space.dim, hidden=recipe.policy_hidden,
                                nonlinearity=recipe.policy_activation, generator=generator)


def build_rl_algorithm(recipe: Recipe, family: MDPFamily | None = None) -> MAMLRL:
    """The learner of every meta-RL algorithm: :class:`MAMLRL` around
    :func:`build_policy`, with the recipe's inner rate, discount and GAE lambda, its
    training inner steps (:attr:`Recipe.rl_train_inner_steps`: 0 for ``pretrained_trpo``
    and ``scratch``) and its order (first for ``fomaml_trpo``, ``reptile_pg`` or
    ``first_order``). ``meta_trained`` is False for ``scratch``: the trainer validates
    the seeded initial policy once and saves it. What differs between ``maml_trpo`` and
    ``reptile_pg`` is the outer step (:mod:`metafit.training.rl`)."""
    family = build_family(recipe) if family is None else family
    return MAMLRL(build_policy(recipe, family), inner_lr=recipe.inner_lr,
                  inner_steps=recipe.rl_train_inner_steps, first_order=recipe.rl_first_order,
                  gamma=recipe.gamma, gae_lambda=recipe.gae_lambda,
                  meta_trained=recipe.rl_meta_trained,
                  inner_objective=recipe.rl_inner_objective,
                  inner_lr_decay=recipe.inner_lr_decay)


def trpo_settings(recipe: Recipe) -> TRPOSettings:
    """The recipe's TRPO outer step (trust region, conjugate gradient, line search)."""
    return TRPOSettings(max_kl=recipe.max_kl, cg_iters=recipe.cg_iters,
                        cg_damping=recipe.cg_damping, ls_max_steps=recipe.ls_max_steps,
                        ls_backtrack_ratio=recipe.ls_backtrack_ratio)


def promp_settings(recipe: Recipe) -> ProMPSettings:
    """The recipe's ProMP outer step (clipping, PPO steps, KL penalty, Adam rate)."""
    return ProMPSettings(clip_eps=recipe.clip_eps, ppo_steps=recipe.ppo_steps,
                         inner_kl_penalty=recipe.inner_kl_penalty, lr=recipe.outer_lr)
