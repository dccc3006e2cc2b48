"""Augmentation as sampler transforms.

A transform maps a meta-batch of :class:`~metafit.episodes.Episodes` to another of the
same shapes, drawing any randomness from the generator it is given. An
:class:`~metafit.data.sampler.EpisodeSampler` built with ``transform=`` applies it to what
:meth:`~metafit.data.sampler.EpisodeSampler.sample` draws, with the sampler's own running
generator, right after the episodes themselves: the sampler's saved state then covers the
augmentation too, so a resumed run draws the same augmented episodes. The fixed evaluation
episodes of :meth:`~metafit.data.sampler.EpisodeSampler.fixed` are never transformed.

    sampler = EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0,
                             transform=TokenMasker(model_dir, 0.15).episodes)
"""

from __future__ import annotations

from typing import Protocol

import torch

from metafit.config.recipe import Recipe
from metafit.episodes import Episodes
from metafit.models.tokenizer import TokenMasker

__all__ = ["EpisodeTransform", "training_transform"]


class EpisodeTransform(Protocol):
    """``(episodes, generator) -> episodes``: the same tasks, shapes and dtypes
    (``support_x [T, N*K, *x]``, ``query_x [T, N*Q, *x]`` and their labels), every random
    draw taken from ``generator`` (a CPU generator; the episodes are on the CPU)."""

    def __call__(self, episodes: Episodes, generator: torch.Generator) -> Episodes: ...


def training_transform(recipe: Recipe) -> EpisodeTransform | None:
    """The augmentation of meta-training episodes a recipe asks for (``None``: none).

    ``text_mask``: masked-token augmentation of a text model's episodes
    (:class:`~metafit.models.tokenizer.TokenMasker`; support texts first, then query
    texts). ``augment: affine``: a random affine distortion of every image
    (:class:`~metafit.data.augment.RandomAffine`, ranges times ``augment_strength``).

    Raises:
        ModelDirError: ``text_mask`` with a tokenizer that has no mask token.
    """
    if recipe.augment == "affine":
        from metafit.data.augment import RandomAffine

        return RandomAffine(strength=recipe.augment_strength)
    if not recipe.text_mask:
        return None
    return TokenMasker(recipe.text_model, recipe.text_mask).episodes
