"""Returns, GAE, masked statistics and the linear feature baseline, against values
computed by hand and a reference loop."""

from __future__ import annotations

import torch

from metafit.rl import (
    Trajectories,
    baseline_features,
    discounted_returns,
    fit_linear_baseline,
    gae,
    linear_baseline_values,
    masked_normalize,
    with_advantages,
)


def _reference_gae(rewards, values, masks, gamma, lam):
    """The backward recursion, one step at a time (the textbook form)."""
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        next_v = values[t + 1] * masks[t + 1] if t + 1 < rewards.shape[0] else 0.0
        next_m = masks[t + 1] if t + 1 < rewards.shape[0] else torch.zeros_like(masks[t])
        delta = rewards[t] + gamma * next_v - values[t]
        running = (delta + gamma * lam * next_m * running) * masks[t]
        adv[t] = running
    return adv


def test_discounted_returns_by_hand() -> None:
    rewards = torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, 5.0], [4.0, 7.0]])  # [H=4, 2]
    masks = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    got = discounted_returns(rewards, masks, 0.5)
    # column 0: G3 = 4, G2 = 3 + 2, G1 = 2 + 2.5, G0 = 1 + 2.25; column 1 ends after t=1
    expected = torch.tensor([[3.25, 1.0], [4.5, 0.0], [5.0, 0.0], [4.0, 0.0]])
    torch.testing.assert_close(got, expected)


def test_gae_by_hand_and_against_the_recursion() -> None:
    rewards = torch.tensor([1.0, 2.0, 3.0])
    values = torch.tensor([0.5, 1.0, 2.0])
    masks = torch.ones(3)
    # deltas: 1 + 0.9*1 - 0.5 = 1.4; 2 + 0.9*2 - 1 = 2.8; 3 + 0 - 2 = 1.0
    # A2 = 1.0; A1 = 2.8 + 0.45*1.0 = 3.25; A0 = 1.4 + 0.45*3.25 = 2.8625
    got = gae(rewards, values, masks, gamma=0.9, lam=0.5)
    torch.testing.assert_close(got, torch.tensor([2.8625, 3.25, 1.0]))
    gen = torch.Generator().manual_seed(0)
    r = torch.randn(12, 3, 4, generator=gen)
    v = torch.randn(12, 3, 4, generator=gen)
    m = (torch.arange(12).view(12, 1, 1) < torch.randint(1, 13, (1, 3, 4), generator=gen)).float()
    for gamma, lam in ((0.99, 1.0), (0.9, 0.95), (0.5, 0.0)):
        torch.testing.assert_close(gae(r * m, v, m, gamma, lam),
                                   _reference_gae(r * m, v, m, gamma, lam))
    torch.testing.assert_close(gae(r * m, v, m, 0.99, 1.0),
                               discounted_returns(r, m, 0.99) - v * m)


def test_masked_normalize() -> None:
    x = torch.tensor([[1.0, 10.0], [3.0, 20.0], [100.0, 30.0]])  # [H=3, B=2]
    masks = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    out = masked_normalize(x.view(3, 1, 2), masks.view(3, 1, 2), dims=(0, 2)).view(3, 2)
    kept = out[masks.bool()]
    assert abs(float(kept.mean())) < 1e-6 and abs(float(kept.std(unbiased=False)) - 1) < 1e-4
    assert float(out[2, 0]) == 0.0


def _batch(h=20, t=3, b=6, seed=0) -> Trajectories:
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(h, t, b, 2, generator=gen, dtype=torch.float64)
    lengths = torch.randint(5, h + 1, (1, t, b), generator=gen)
    masks = (torch.arange(h).view(h, 1, 1) < lengths).double()
    return Trajectories(obs, torch.zeros(h, t, b, 2, dtype=torch.float64),
                        torch.randn(h, t, b, generator=gen, dtype=torch.float64) * masks,
                        masks, torch.zeros(h, t, b, dtype=torch.bool))


def test_linear_baseline_recovers_returns_that_are_linear_in_its_features() -> None:
    batch = _batch()
    phi = baseline_features(batch.observations, batch.masks)  # [H, T, B, 8]
    assert phi.shape == (20, 3, 6, 8)
    assert bool((phi[batch.masks == 0] == 0).all())
    torch.testing.assert_close(phi[3, 0, 0, 4:7], torch.tensor([0.03, 0.0009, 0.000027],
                                                               dtype=torch.float64))
    truth = torch.randn(3, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    targets = torch.einsum("htbf,tf->htb", phi, truth)  # a different linear map per task
    weights = fit_linear_baseline(phi, targets, batch.masks, reg=1e-10)
    torch.testing.assert_close(weights, truth, rtol=1e-2, atol=1e-3)  # t, t^2, t^3: ill-posed
    values = linear_baseline_values(batch, targets, reg=1e-10)
    torch.testing.assert_close(values, targets, rtol=1e-6, atol=1e-6)
    per_task = linear_baseline_values(batch.tasks(slice(1, 2)), targets[:, 1:2], reg=1e-10)
    torch.testing.assert_close(per_task, values[:, 1:2])  # tasks are fitted independently


def test_linear_baseline_survives_collinear_features() -> None:
    batch = _batch()
    one_hot = torch.nn.functional.one_hot(batch.observations[..., 0].gt(0).long(), 2).double()
    collinear = batch.replace(observations=one_hot)  # s == s^2: X^T X is singular
    values = linear_baseline_values(collinear, batch.rewards, reg=0.0)
    assert bool(values.isfinite().all()) and values.abs().max() > 0


def test_with_advantages_normalizes_per_task() -> None:
    batch = with_advantages(_batch(), gamma=0.99, gae_lambda=0.95)
    assert batch.advantages is not None
    for t in range(3):
        kept = batch.advantages[:, t][batch.masks[:, t].bool()]
        assert abs(float(kept.mean())) < 1e-8 and abs(float(kept.std(unbiased=False)) - 1) < 1e-6
    raw = with_advantages(_batch(), gamma=0.9, normalize=False, baseline=False)
    torch.testing.assert_close(raw.advantages, discounted_returns(raw.rewards, raw.masks, 0.9))
