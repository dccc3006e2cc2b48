"""Policies: densities and KLs against torch.distributions, sampling, and the per-task
vectorised forward against a loop of functional calls."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, Normal, kl_divergence
from torch.func import functional_call

from metafit.rl import CategoricalMLPPolicy, GaussianMLPPolicy, per_task, policy_output


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_gaussian_policy_matches_torch_distributions() -> None:
    policy = GaussianMLPPolicy(3, 2, hidden=(8, 8), init_std=0.7, generator=_gen(0))
    assert dict(policy.named_parameters()).keys() >= {"log_std", "mean.0.weight"}
    obs = torch.randn(5, 3, generator=_gen(1))
    p, q = policy(obs), policy(obs + 0.3)
    assert p.shape == (5, 4)
    mean, log_std = policy.split(p)
    torch.testing.assert_close(log_std, torch.full((5, 2), math.log(0.7)))
    dist_p = Independent(Normal(mean, log_std.exp()), 1)
    dist_q = Independent(Normal(*(lambda m, s: (m, s.exp()))(*policy.split(q))), 1)
    actions = torch.randn(5, 2, generator=_gen(2))
    torch.testing.assert_close(policy.log_prob(p, actions), dist_p.log_prob(actions))
    torch.testing.assert_close(policy.kl(p, q), kl_divergence(dist_p, dist_q))
    torch.testing.assert_close(policy.entropy(p), dist_p.entropy())
    draws = policy.sample(p[:1].expand(20000, 4), _gen(3))  # [N, 2]
    assert (draws.mean(0) - mean[0]).abs().max() < 4 * 0.7 / math.sqrt(20000)
    assert (draws.std(0) - 0.7).abs().max() < 0.02
    with torch.no_grad():
        policy.log_std.fill_(-50.0)
    assert float(policy.split(policy(obs))[1].detach().min()) == pytest.approx(math.log(1e-6))


def test_gaussian_policy_in_units_of_the_action_bound() -> None:
    """action_center / action_scale: the same MLP's mean mapped to center + scale * mean and
    the std multiplied by scale (rllab's normalize), so log-probabilities of actions differ
    from the unscaled policy's at (action - center) / scale by exactly -log(scale) per
    dimension; bad scales are refused."""
    plain = GaussianMLPPolicy(3, 2, hidden=(8,), init_std=0.5, generator=_gen(0))
    scaled = GaussianMLPPolicy(3, 2, hidden=(8,), init_std=0.5, generator=_gen(0),
                               action_center=0.2, action_scale=0.1)
    obs = torch.randn(4, 3, generator=_gen(1))
    (m0, s0), (m1, s1) = plain.split(plain(obs)), scaled.split(scaled(obs))
    torch.testing.assert_close(m1, 0.2 + 0.1 * m0)
    torch.testing.assert_close(s1, s0 + math.log(0.1))
    actions = torch.randn(4, 2, generator=_gen(2))
    torch.testing.assert_close(scaled.log_prob(scaled(obs), 0.2 + 0.1 * actions),
                               plain.log_prob(plain(obs), actions) - 2 * math.log(0.1))
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="action_scale"):
            GaussianMLPPolicy(3, 2, action_scale=bad)


def test_categorical_policy_matches_torch_distributions() -> None:
    policy = CategoricalMLPPolicy(4, 3, hidden=(8,), generator=_gen(0))
    obs = torch.randn(6, 4, generator=_gen(1))
    p, q = policy(obs), policy(obs * 2)
    actions = torch.randint(0, 3, (6,), generator=_gen(2))
    torch.testing.assert_close(policy.log_prob(p, actions), Categorical(logits=p).log_prob(actions))
    torch.testing.assert_close(policy.kl(p, q),
                               kl_divergence(Categorical(logits=p), Categorical(logits=q)))
    torch.testing.assert_close(policy.entropy(p), Categorical(logits=p).entropy())
    draws = policy.sample(p[:1].expand(30000, 3), _gen(3))  # [N]
    freq = torch.bincount(draws, minlength=3).float() / 30000
    assert (freq - torch.softmax(p[0], -1)).abs().max() < 0.015
    assert torch.equal(policy.mode(p), p.argmax(-1))


def test_per_task_forward_equals_a_loop_of_functional_calls() -> None:
    policy = GaussianMLPPolicy(2, 2, hidden=(8,), generator=_gen(0))
    base = dict(policy.named_parameters())
    params = {n: p + 0.1 * torch.randn(3, *p.shape, generator=_gen(i))
              for i, (n, p) in enumerate(base.items())}  # [T=3, *param], different tasks
    obs = torch.randn(7, 3, 4, 2, generator=_gen(9))  # [H, T, B, obs]
    out = policy_output(policy, params, obs)
    assert out.shape == (7, 3, 4, 4)
    for t in range(3):
        one = functional_call(policy, {n: p[t] for n, p in params.items()}, (obs[:, t],))
        torch.testing.assert_close(out[:, t], one)
    shared = policy_output(policy, per_task(base, 3), obs[0])  # [T, B, obs] -> [T, B, D]
    torch.testing.assert_close(shared, policy(obs[0]))
    out = policy_output(policy, per_task(base, 3), obs)
    loss = (out + out.square()).sum()
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(loss, list(base.values())))
