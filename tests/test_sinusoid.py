"""Sinusoid task family (MAML sec. 5.1): shapes, ranges, true curve, determinism, sampler."""

from __future__ import annotations

import math

import pytest
import torch

from metafit.data.base import ClassDataset, TaskFamily
from metafit.data.sampler import EpisodeSampler
from metafit.data.sinusoid import Sinusoid


def test_protocol_shapes_and_dtypes() -> None:
    fam = Sinusoid()
    assert isinstance(fam, TaskFamily) and not isinstance(fam, ClassDataset)
    assert fam.is_regression is True
    eps = fam.sample_episodes(7, 5, 3, torch.Generator().manual_seed(0))
    assert eps.support_x.shape == (7, 5, 1) and eps.support_y.shape == (7, 5, 1)
    assert eps.query_x.shape == (7, 3, 1) and eps.query_y.shape == (7, 3, 1)
    for t in (eps.support_x, eps.support_y, eps.query_x, eps.query_y):
        assert t.dtype == torch.float32
    assert eps.classes is None and eps.is_regression and eps.ways == 1


def test_ranges_of_parameters_and_inputs() -> None:
    fam = Sinusoid()
    amp, phase = fam.sample_tasks(4000, torch.Generator().manual_seed(1))
    assert amp.shape == phase.shape == (4000,)
    assert 0.1 <= float(amp.min()) and float(amp.max()) <= 5.0
    assert 0.0 <= float(phase.min()) and float(phase.max()) <= math.pi
    # roughly uniform: the range is nearly covered
    assert float(amp.min()) < 0.2 and float(amp.max()) > 4.9
    assert float(phase.min()) < 0.05 and float(phase.max()) > math.pi - 0.05
    eps = fam.sample_episodes(500, 10, 10, torch.Generator().manual_seed(2))
    xs = torch.cat([eps.support_x, eps.query_x], 1)
    assert -5.0 <= float(xs.min()) < -4.9 and 4.9 < float(xs.max()) <= 5.0
    assert float(eps.query_y.abs().max()) <= 5.0 + 1e-5


def test_targets_follow_the_curve_of_the_cloned_generator() -> None:
    fam = Sinusoid()
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    eps = fam.sample_episodes(16, 5, 8, gen)
    amp, phase = fam.sample_tasks(16, torch.Generator().set_state(state))
    expected_q = amp.view(16, 1, 1) * torch.sin(eps.query_x - phase.view(16, 1, 1))
    torch.testing.assert_close(eps.query_y, expected_q)
    torch.testing.assert_close(eps.support_y, Sinusoid.curve(amp, phase, eps.support_x))
    # the convention is x - phase, not x + phase
    assert not torch.allclose(
        eps.query_y, amp.view(16, 1, 1) * torch.sin(eps.query_x + phase.view(16, 1, 1))
    )


def test_curve_scalar_and_batched() -> None:
    x = torch.linspace(-5, 5, 11)
    torch.testing.assert_close(
        Sinusoid.curve(torch.tensor(2.0), torch.tensor(0.5), x), 2.0 * torch.sin(x - 0.5)
    )
    out = Sinusoid.curve(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0]), x.view(1, 11, 1))
    assert out.shape == (2, 11, 1)
    torch.testing.assert_close(out[1, :, 0], 3.0 * torch.sin(x - 1.0))


def test_determinism_per_seed_and_seeds_differ() -> None:
    fam = Sinusoid()
    a = fam.sample_episodes(4, 5, 5, torch.Generator().manual_seed(10))
    b = fam.sample_episodes(4, 5, 5, torch.Generator().manual_seed(10))
    c = fam.sample_episodes(4, 5, 5, torch.Generator().manual_seed(11))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_y, b.query_y)
    assert not torch.equal(a.support_x, c.support_x)
    assert not torch.equal(a.query_y, c.query_y)


def test_custom_ranges_and_validation() -> None:
    fam = Sinusoid(amplitude=(2.0, 2.0), phase=(0.0, 0.0), x_range=(0.0, 1.0))
    eps = fam.sample_episodes(3, 4, 4, torch.Generator().manual_seed(0))
    assert 0.0 <= float(eps.support_x.min()) and float(eps.support_x.max()) <= 1.0
    torch.testing.assert_close(eps.support_y, 2.0 * torch.sin(eps.support_x))
    with pytest.raises(ValueError, match="amplitude.*low <= high"):
        Sinusoid(amplitude=(5.0, 0.1))
    with pytest.raises(ValueError, match="phase"):
        Sinusoid(phase=(1.0, 0.0))
    with pytest.raises(ValueError, match="x_range"):
        Sinusoid(x_range=(0.0, float("inf")))
    with pytest.raises(ValueError, match="shots"):
        Sinusoid().sample_episodes(2, 0, 3, torch.Generator())
    with pytest.raises(ValueError, match="n must be"):
        Sinusoid().sample_tasks(0, torch.Generator())


def test_episode_sampler_integration() -> None:
    sampler = EpisodeSampler(Sinusoid(), ways=1, shots=10, queries=10, seed=0)
    assert sampler.is_task_family
    eps = sampler.sample(8)
    assert eps.support_x.shape == (8, 10, 1) and eps.query_y.shape == (8, 10, 1)
    again = EpisodeSampler(Sinusoid(), ways=1, shots=10, queries=10, seed=0).sample(8)
    assert torch.equal(eps.query_y, again.query_y)
    assert not torch.equal(sampler.sample(8).query_y, eps.query_y)  # the stream moves on
    fixed = sampler.fixed(5)
    assert fixed is sampler.fixed(5) and fixed.support_x.shape == (5, 10, 1)
