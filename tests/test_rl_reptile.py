"""Reptile on policies (Nichol et al. 2018) and the two baselines of the MAML paper's
Figure 4: the update against a hand computation, the scratch run's checkpoint against the
seeded initialisation, and the pretrained run against MAML-TRPO without inner steps."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from metafit.config.recipe import RecipeError, load_recipe
from metafit.rl import MAMLRL, GaussianMLPPolicy, Nav2d, TaskSampler, per_task
from metafit.rl.from_recipe import build_rl_algorithm
from metafit.rl.maml import MetaEpisode
from metafit.rl.objectives import reinforce_losses
from metafit.rl.reptile import reptile_step
from metafit.runs.directory import RunDir
from metafit.runs.rl import load_rl_trained
from metafit.training.rl import (
    ProMPOuterStep,
    ReptileOuterStep,
    RLTrainer,
    TRPOOuterStep,
    outer_step,
)
from test_rl_training import metrics_without_seconds, tiny

DT = torch.float64


def _episode(tasks: int, steps: int) -> tuple[MAMLRL, MetaEpisode]:
    family = Nav2d(horizon=8, dtype=DT)
    env = family.env(TaskSampler(family, seed=3).sample(tasks))
    policy = GaussianMLPPolicy(2, 2, hidden=(8,),
                               generator=torch.Generator().manual_seed(3)).to(DT)
    algo = MAMLRL(policy, inner_lr=0.3, inner_steps=steps, first_order=True)
    return algo, algo.sample(env, 5, torch.Generator().manual_seed(4))


def _by_hand(algo: MAMLRL, episode: MetaEpisode, epsilon: float) -> dict[str, Tensor]:
    """theta + epsilon * mean_t (theta_K[t] - theta), each task's K steps taken one task at
    a time with plain autograd on its own REINFORCE loss (no inner_update)."""
    theta = {n: p.detach().clone() for n, p in algo.policy.named_parameters()}
    tasks = episode.query.num_tasks
    adapted = []
    for t in range(tasks):
        current = dict(theta)
        for support in episode.supports:
            leaves = {n: p.clone().requires_grad_() for n, p in current.items()}
            loss = reinforce_losses(algo.policy, per_task(leaves, tasks), support)[t]
            grads = torch.autograd.grad(loss, list(leaves.values()))
            current = {n: (p - algo.inner_lr * g).detach()
                       for (n, p), g in zip(leaves.items(), grads, strict=True)}
        adapted.append(current)
    return {n: theta[n] + epsilon * torch.stack([a[n] - theta[n] for a in adapted]).mean(0)
            for n in theta}


def test_one_task_one_step_update_is_epsilon_times_the_adapted_difference() -> None:
    algo, episode = _episode(tasks=1, steps=1)
    before = {n: p.detach().clone() for n, p in algo.policy.named_parameters()}
    expected = _by_hand(algo, episode, 0.25)
    metrics = reptile_step(algo, episode, 0.25)
    moved = 0.0
    for n, p in algo.policy.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-12, atol=1e-14)
        moved += float((p.detach() - before[n]).pow(2).sum())
    assert moved > 0 and metrics["step_norm"] == pytest.approx(moved ** 0.5, rel=1e-9)
    # one task: the update is epsilon times the distance the task moved
    assert metrics["step_norm"] == pytest.approx(0.25 * metrics["adapted_distance"], rel=1e-9)


def test_the_update_averages_the_tasks_after_several_inner_steps() -> None:
    algo, episode = _episode(tasks=3, steps=2)
    expected = _by_hand(algo, episode, 0.7)
    reptile_step(algo, episode, 0.7)
    for n, p in algo.policy.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-10, atol=1e-12)


def test_reptile_refuses_what_would_do_nothing() -> None:
    algo, episode = _episode(tasks=1, steps=1)
    with pytest.raises(ValueError, match="epsilon"):
        reptile_step(algo, episode, 0.0)
    _, flat = _episode(tasks=1, steps=0)
    with pytest.raises(ValueError, match="at least one inner step"):
        reptile_step(algo, flat, 0.5)
    with pytest.raises(RecipeError, match="inner_steps must be at least 1 for algorithm "
                                          "'reptile_pg'"):
        load_recipe("rl_nav2d_reptile", ["inner_steps=0"])


def test_each_algorithm_gets_its_outer_step_and_training_inner_steps() -> None:
    reptile = load_recipe("rl_nav2d_reptile")
    step = outer_step(reptile)
    assert isinstance(step, ReptileOuterStep) and step.epsilon == reptile.outer_lr == 0.5
    assert build_rl_algorithm(reptile).inner_steps == reptile.inner_steps == 3
    for name in ("rl_nav2d_maml", "rl_nav2d_pretrained", "rl_nav2d_scratch"):
        assert isinstance(outer_step(load_recipe(name)), TRPOOuterStep)
    promp = load_recipe("rl_nav2d_promp")
    learner = build_rl_algorithm(promp)
    step = outer_step(promp, learner)
    assert isinstance(step, ProMPOuterStep) and step.settings.clip_eps == 0.3
    assert step.params == list(learner.trainable_parameters().values())
    assert learner.inner_steps == 1 and learner.inner_objective == "lvc"
    with pytest.raises(ValueError, match="pass the learner"):
        outer_step(promp)
    pretrained = build_rl_algorithm(load_recipe("rl_nav2d_pretrained"))
    assert pretrained.inner_steps == 0 and pretrained.meta_trained
    assert not build_rl_algorithm(load_recipe("rl_nav2d_scratch")).meta_trained


def test_a_scratch_run_saves_the_seeded_initial_policy(tmp_path: Path) -> None:
    recipe = tiny("rl_nav2d_scratch")
    state = RLTrainer(recipe, tmp_path / "run", progress=False).fit()
    run = RunDir(tmp_path / "run")
    assert state.iteration == 0 and run.status()["reason"] == "not meta-trained"
    records = run.read_metrics()
    assert [(r["split"], r["iteration"]) for r in records] == [("val", 0)]
    fresh = build_rl_algorithm(recipe)  # seeded by recipe.seed
    for which in ("best", "last"):
        _, saved = load_rl_trained(run.path, which)
        for (n, p), (_, q) in zip(saved.state_dict().items(), fresh.state_dict().items(),
                                  strict=True):
            assert torch.equal(p, q), (which, n)
    other = build_rl_algorithm(tiny("rl_nav2d_scratch", "seed=1"))  # the seed matters
    weight = "policy.mean.0.weight"
    assert not torch.equal(other.state_dict()[weight], fresh.state_dict()[weight])


def test_pretrained_takes_maml_trpo_steps_without_inner_steps(tmp_path: Path) -> None:
    """The same TRPO on the same task batches as a MAML-TRPO run with no inner step, and
    validated after the same fine-tuning steps."""
    RLTrainer(tiny("rl_nav2d_pretrained"), tmp_path / "pre", progress=False).fit()
    RLTrainer(tiny("rl_nav2d_maml", "inner_steps=0"),  # validated after 3 steps, too
              tmp_path / "maml0", progress=False).fit()
    pre = metrics_without_seconds(tmp_path / "pre")
    assert pre == metrics_without_seconds(tmp_path / "maml0")
    train = [r for r in pre if r["split"] == "train"]
    assert all(r["return_before"] == r["return_after"] for r in train)  # no inner step
    assert all(r["line_search_steps"] > 0 for r in train)
