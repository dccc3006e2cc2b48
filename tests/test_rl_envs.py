"""Task families and tensor environments: shapes, dynamics by hand, seeding, and the
exact returns against Monte-Carlo rollouts."""

from __future__ import annotations

import math

import pytest
import torch

from metafit.rl import (
    Bandit,
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    Nav2d,
    Pendulum,
    TabularMDP,
    TaskSampler,
    bandit_expected_return,
    per_task,
    policy_output,
    rollout,
    tabular_expected_return,
)
from metafit.rl.env import index_tasks


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_nav2d_steps_by_hand() -> None:
    env = Nav2d().env({"goal": torch.tensor([[0.3, -0.2], [0.0, 0.05]])})
    state, obs = env.reset(3, _gen(0))
    assert state.shape == obs.shape == (2, 3, 2) and bool((obs == 0).all())
    actions = torch.tensor([0.5, -0.05]).expand(2, 3, 2)  # x clipped to 0.1
    out = env.step(state, actions, _gen(0))
    assert torch.allclose(out.observations, torch.tensor([0.1, -0.05]).expand(2, 3, 2))
    expected = -torch.tensor([math.hypot(0.1 - 0.3, -0.05 + 0.2), math.hypot(0.1, -0.1)])
    assert out.rewards.shape == (2, 3)
    torch.testing.assert_close(out.rewards, expected.unsqueeze(1).expand(2, 3))
    assert not bool(out.dones.any())
    near = env.step(torch.tensor([0.295, -0.195]).expand(2, 3, 2).clone(),
                    torch.zeros(2, 3, 2), _gen(0))
    assert near.dones[0].all() and not near.dones[1].any()  # within 0.01 of goal 0 only


def test_task_sampler_is_seeded_and_its_fixed_tasks_do_not_move() -> None:
    a, b = TaskSampler(Nav2d(), seed=7), TaskSampler(Nav2d(), seed=7)
    first = a.sample(20)["goal"]
    assert first.shape == (20, 2) and bool((first.abs() <= 0.5).all())
    torch.testing.assert_close(first, b.sample(20)["goal"])
    assert not torch.equal(first, a.sample(20)["goal"])  # the stream advances
    torch.testing.assert_close(a.fixed(10)["goal"], b.fixed(10)["goal"])
    torch.testing.assert_close(a.fixed(10)["goal"], a.fixed(10)["goal"])
    assert not torch.equal(a.fixed(20)["goal"], first)
    assert not torch.equal(TaskSampler(Nav2d(), seed=8).fixed(10)["goal"], a.fixed(10)["goal"])
    with pytest.raises(ValueError, match="positive"):
        a.sample(0)
    state = a.state_dict()
    upcoming = a.sample(3)["goal"]
    a.load_state_dict(state)
    torch.testing.assert_close(a.sample(3)["goal"], upcoming)


@pytest.mark.parametrize("family", [Nav2d(horizon=7), Bandit(arms=4, horizon=6),
                                    TabularMDP(states=5, actions=3, horizon=4),
                                    Pendulum(horizon=6)],
                         ids=["nav2d", "bandit", "tabular", "pendulum"])
def test_rollout_shapes_and_determinism(family) -> None:
    tasks = family.sample(3, _gen(0))
    env = family.env(tasks)
    if family.action_space.kind == "continuous":
        policy = GaussianMLPPolicy(env.obs_dim, family.action_space.dim, hidden=(8,),
                                   generator=_gen(1))
    else:
        policy = CategoricalMLPPolicy(env.obs_dim, family.action_space.dim, hidden=(8,),
                                      generator=_gen(1))
    params = per_task(dict(policy.named_parameters()), 3)
    one = rollout(env, policy, params, 5, _gen(2))
    again = rollout(env, policy, params, 5, _gen(2))
    other = rollout(env, policy, params, 5, _gen(3))
    h = family.horizon
    assert one.observations.shape == (h, 3, 5, env.obs_dim)
    assert one.rewards.shape == one.masks.shape == one.dones.shape == (h, 3, 5)
    assert one.actions.shape[:3] == (h, 3, 5)
    for name in ("observations", "actions", "rewards", "masks"):
        assert torch.equal(getattr(one, name), getattr(again, name))
    assert not torch.equal(one.actions, other.actions)
    assert one.returns().shape == (3, 5)
    alone = family.env(index_tasks(tasks, slice(1, 2)))
    assert alone.num_tasks == 1 and one.tasks(slice(1, 2)).rewards.shape == (h, 1, 5)


def test_an_episode_that_reaches_its_goal_is_masked_after() -> None:
    policy = GaussianMLPPolicy(2, 2, hidden=(4,), init_std=1e-9, generator=_gen(0))
    with torch.no_grad():  # mean action 0.05 everywhere, std 1e-6 (the floor)
        policy.mean[-1].weight.zero_()
        policy.mean[-1].bias.fill_(0.05)
    env = Nav2d(horizon=6).env({"goal": torch.tensor([[0.1, 0.1], [0.4, 0.4]])})
    batch = rollout(env, policy, per_task(dict(policy.named_parameters()), 2), 2, _gen(0))
    assert batch.masks[:, 0].tolist() == [[1.0, 1.0]] * 2 + [[0.0, 0.0]] * 4
    assert batch.dones[1, 0].all() and int(batch.dones.sum()) == 2
    assert bool((batch.rewards[2:, 0] == 0).all()) and bool((batch.rewards[:, 1] < 0).all())
    assert batch.lengths().tolist() == [[2.0, 2.0], [6.0, 6.0]]


def test_bandit_rewards_and_exact_return_match_monte_carlo() -> None:
    family = Bandit(arms=3, horizon=5, dtype=torch.float64)
    tasks = family.sample(2, _gen(0))
    policy = CategoricalMLPPolicy(1, 3, hidden=(4,), generator=_gen(1)).double()
    params = per_task(dict(policy.named_parameters()), 2)
    batch = rollout(family.env(tasks), policy, params, 20000, _gen(2))
    probs = torch.softmax(policy_output(policy, params, torch.ones(2, 1, 1, dtype=torch.float64)),
                          -1)[:, 0]  # [T, A]
    exact = bandit_expected_return(tasks, probs, 5)  # [T]
    returns = batch.returns()  # [T, B]
    se = returns.std(dim=1) / math.sqrt(returns.shape[1])
    assert bool(((returns.mean(dim=1) - exact).abs() < 4 * se).all())
    pulls = torch.nn.functional.one_hot(batch.actions, 3).double()  # [H, T, B, A]
    paid = (batch.rewards.unsqueeze(-1) * pulls).sum((0, 2)) / pulls.sum((0, 2))  # [T, A]
    assert (paid - tasks["probs"]).abs().max() < 0.02


def test_tabular_transitions_and_exact_return_match_monte_carlo() -> None:
    family = TabularMDP(states=4, actions=2, horizon=4, dtype=torch.float64)
    tasks = family.sample(2, _gen(5))
    torch.testing.assert_close(tasks["transitions"].sum(-1), torch.ones(2, 4, 2,
                                                                         dtype=torch.float64))
    policy = CategoricalMLPPolicy(4, 2, hidden=(4,), generator=_gen(1)).double()
    params = per_task(dict(policy.named_parameters()), 2)
    batch = rollout(family.env(tasks), policy, params, 20000, _gen(6))
    obs = torch.eye(4, dtype=torch.float64).expand(2, 4, 4)
    probs = torch.softmax(policy_output(policy, params, obs), -1)  # [T, S, A]
    exact = tabular_expected_return(tasks, probs, 4)
    returns = batch.returns()
    se = returns.std(dim=1) / math.sqrt(returns.shape[1])
    assert bool(((returns.mean(dim=1) - exact).abs() < 4 * se).all())
    assert bool((batch.observations[0].argmax(-1) == 0).all())  # episodes start in state 0
    # the first transition from state 0 under each action follows P(0, a, .)
    first_next = batch.observations[1].argmax(-1)  # [T, B]
    for t in range(2):
        for a in range(2):
            chosen = batch.actions[0, t] == a
            freq = torch.bincount(first_next[t][chosen], minlength=4).double() / chosen.sum()
            assert (freq - tasks["transitions"][t, 0, a]).abs().max() < 0.03
