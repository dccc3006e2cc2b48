"""MAML-RL on a small 2D-navigation meta-batch: the batched inner step against a loop over
tasks, first- and second-order meta-gradients, seeding, and what the inner step does."""

from __future__ import annotations

import pytest
import torch

from metafit.functional import Rates
from metafit.rl import MAMLRL, GaussianMLPPolicy, Nav2d, TaskSampler, per_task
from metafit.rl.objectives import reinforce_losses, surrogate_losses

DT = torch.float64


def _setup(first_order: bool = False, inner_steps: int = 1, seed: int = 0):
    family = Nav2d(horizon=10, dtype=DT)
    env = family.env(TaskSampler(family, seed=seed).sample(3))
    policy = GaussianMLPPolicy(2, 2, hidden=(8,),
                               generator=torch.Generator().manual_seed(seed)).to(DT)
    algo = MAMLRL(policy, inner_lr=0.5, inner_steps=inner_steps, first_order=first_order)
    episode = algo.sample(env, 6, torch.Generator().manual_seed(seed + 1))
    return algo, env, episode


def test_sampling_is_seeded_and_interleaves_adaptation() -> None:
    algo, env, episode = _setup(inner_steps=2)
    again = algo.sample(env, 6, torch.Generator().manual_seed(1))
    assert len(episode.supports) == 2 and episode.query.rewards.shape == (10, 3, 6)
    for a, b in zip((*episode.supports, episode.query), (*again.supports, again.query),
                    strict=True):
        assert torch.equal(a.actions, b.actions) and torch.equal(a.advantages, b.advantages)
    assert episode.returns().shape == (3, 3)
    # the query was sampled with the adapted parameters, which differ from the initial ones
    adapted = algo.adapted(episode, graph=False)
    initial = algo.initial_params(3, graph=False)
    assert all(not torch.allclose(adapted[n], initial[n]) for n in ("mean.0.weight",))


def test_the_batched_inner_step_equals_one_task_at_a_time() -> None:
    algo, _, episode = _setup()
    support = episode.supports[0]
    batched = algo.inner_step(algo.initial_params(3), support, 0, graph=True)
    for t in range(3):
        one = algo.inner_step(algo.initial_params(1), support.tasks(slice(t, t + 1)), 0,
                              graph=True)
        for n in one:
            torch.testing.assert_close(batched[n][t], one[n][0])


def test_inner_step_lowers_each_tasks_support_surrogate() -> None:
    algo, _, episode = _setup()
    support = episode.supports[0]
    start = algo.initial_params(3, graph=False)
    old = surrogate_losses(algo.policy, start, support).out.detach()
    algo.inner_lr = 0.05  # a small step: the first-order decrease dominates
    adapted = algo.inner_step(start, support, 0, graph=False)
    before = surrogate_losses(algo.policy, start, support, old).losses  # [T]
    after = surrogate_losses(algo.policy, adapted, support, old).losses
    assert bool((after < before).all())
    leaves = {n: p.clone().requires_grad_() for n, p in start.items()}
    grads = torch.autograd.grad(reinforce_losses(algo.policy, leaves, support).sum(),
                                list(leaves.values()))
    for n, g in zip(leaves, grads, strict=True):  # theta' = theta - lr * (per-task gradient)
        torch.testing.assert_close((start[n] - adapted[n]) / 0.05, g)


def test_first_order_meta_gradient_is_the_gradient_at_the_adapted_parameters() -> None:
    algo, _, episode = _setup(first_order=True)
    grads, metrics = algo.meta_gradients(episode)
    assert set(grads) == {n for n, _ in algo.named_parameters()}
    assert set(metrics) == {"loss", "return_before", "return_after"}
    adapted = {n: p.detach().requires_grad_() for n, p in algo.adapted(episode, False).items()}
    loss = surrogate_losses(algo.policy, adapted, episode.query).loss
    plain = torch.autograd.grad(loss, list(adapted.values()))
    for (n, _), g in zip(adapted.items(), plain, strict=True):
        torch.testing.assert_close(grads[f"policy.{n}"], g.sum(dim=0))  # summed over tasks


def test_second_order_meta_gradient_adds_the_inner_hessian_term() -> None:
    second, _, episode = _setup(first_order=False)
    first = MAMLRL(second.policy, inner_lr=0.5, first_order=True)
    g2, _ = second.meta_gradients(episode)
    g1, _ = first.meta_gradients(episode)
    assert all(g.isfinite().all() for g in g2.values())
    assert sum(float(g.abs().sum()) for g in g2.values()) > 0
    diff = max(float((g2[n] - g1[n]).abs().max()) for n in g2)
    assert diff > 1e-3 * max(float(g.abs().max()) for g in g2.values())


def test_zero_inner_steps_is_plain_policy_gradient() -> None:
    algo, env, _ = _setup(inner_steps=0)
    episode = algo.sample(env, 6, torch.Generator().manual_seed(3))
    assert episode.supports == () and episode.returns().shape == (3, 1)
    grads, _ = algo.meta_gradients(episode)
    params = {n: p for n, p in algo.policy.named_parameters()}
    loss = reinforce_losses(algo.policy, per_task(params, 3), episode.query).mean()
    plain = torch.autograd.grad(loss, list(params.values()))
    for n, g in zip(params, plain, strict=True):  # ratio 1: the surrogate's gradient is PG
        torch.testing.assert_close(grads[f"policy.{n}"], g)


def test_rates_and_validation() -> None:
    algo, _, _ = _setup()
    assert isinstance(algo.rates, Rates) and algo.rates.lr == 0.5
    with pytest.raises(ValueError, match="inner_steps"):
        MAMLRL(algo.policy, inner_steps=-1)


def test_inner_lr_decay_scales_every_step_after_the_first() -> None:
    """inner_lr_decay: step 0 at inner_lr, later steps at inner_lr * decay (the MAML
    authors' evaluation schedule); the default keeps one rate."""
    algo, _, episode = _setup()
    support = episode.supports[0]
    start = algo.initial_params(3, graph=False)
    decayed = MAMLRL(algo.policy, inner_lr=0.5, inner_lr_decay=0.5)
    at_quarter = MAMLRL(algo.policy, inner_lr=0.25)
    assert algo.rates_at(3).lr == 0.5 and decayed.rates_at(0).lr == 0.5
    assert decayed.rates_at(1).lr == decayed.rates_at(2).lr == 0.25
    first, plain = (decayed.inner_step(start, support, 0, graph=False),
                    algo.inner_step(start, support, 0, graph=False))
    later, quarter = (decayed.inner_step(start, support, 1, graph=False),
                      at_quarter.inner_step(start, support, 1, graph=False))
    for n in start:
        torch.testing.assert_close(first[n], plain[n])
        torch.testing.assert_close(later[n], quarter[n])
        assert not torch.allclose(later[n], plain[n])
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="inner_lr_decay"):
            MAMLRL(algo.policy, inner_lr_decay=bad)
