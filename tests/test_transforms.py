"""Sampler transforms: applied to ``sample`` (not ``fixed``), drawing from the sampler's own
stream right after the episodes, so the sampler's saved state covers them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from metafit.config.recipe import load_recipe
from metafit.data.sampler import EpisodeSampler
from metafit.data.transforms import EpisodeTransform, training_transform
from metafit.episodes import Episodes
from test_sampler import index_dataset
from text_fixtures import shared_model_dir


def add_noise(episodes: Episodes, generator: torch.Generator) -> Episodes:
    """A transform: support then query features plus uniform noise from ``generator``."""
    return replace(episodes,
                   support_x=episodes.support_x + torch.rand(episodes.support_x.shape,
                                                             generator=generator),
                   query_x=episodes.query_x + torch.rand(episodes.query_x.shape,
                                                         generator=generator))


def test_a_transform_draws_from_the_samplers_stream_after_the_episodes() -> None:
    ds = index_dataset()
    transform: EpisodeTransform = add_noise
    augmented = EpisodeSampler(ds, 5, 1, 3, seed=4, transform=transform)
    plain = EpisodeSampler(ds, 5, 1, 3, seed=4)
    for _ in range(3):  # the same stream as drawing, then transforming by hand
        got = augmented.sample(2)
        expected = add_noise(plain.sample(2), plain.generator)
        for name in ("support_x", "support_y", "query_x", "query_y", "classes"):
            assert torch.equal(getattr(got, name), getattr(expected, name)), name
    assert not torch.equal(got.support_x, got.support_x.floor())  # noise was added
    assert torch.equal(augmented.generator.get_state(), plain.generator.get_state())


def test_fixed_episodes_are_never_transformed() -> None:
    ds = index_dataset()
    augmented = EpisodeSampler(ds, 5, 1, 3, seed=4, transform=add_noise)
    plain = EpisodeSampler(ds, 5, 1, 3, seed=4)
    assert torch.equal(augmented.fixed(3).support_x, plain.fixed(3).support_x)
    assert torch.equal(augmented.fixed(3).query_x, plain.fixed(3).query_x)


def test_a_restored_sampler_draws_the_same_augmented_episodes() -> None:
    ds = index_dataset()
    first = EpisodeSampler(ds, 5, 1, 3, seed=4, transform=add_noise)
    first.sample(2)
    state = first.state_dict()
    expected = first.sample(2)
    again = EpisodeSampler(ds, 5, 1, 3, seed=4, transform=add_noise)
    again.load_state_dict(state)
    assert torch.equal(again.sample(2).support_x, expected.support_x)


def test_training_transform_follows_the_recipe(tmp_path: Path) -> None:
    base = {"text_model": str(shared_model_dir()), "data_root": str(tmp_path)}
    assert training_transform(load_recipe("_banking77", base)) is None
    masking = training_transform(load_recipe("_banking77", {**base, "text_mask": 0.3}))
    assert masking is not None
    ids = torch.full((1, 2, 8), 2000)  # [T, N*K, L] ordinary word pieces
    out = masking(Episodes(ids, torch.zeros(1, 2, dtype=torch.long), ids.clone(),
                           torch.zeros(1, 2, dtype=torch.long)), torch.Generator())
    assert (out.support_x != ids).any() or (out.query_x != ids).any()
