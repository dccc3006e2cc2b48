"""What a trainer is built from: its samplers, each rank's share of the meta-batch, the
process's torch settings, and the feature cache of a frozen body."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from metafit.config.recipe import Recipe
from metafit.data.base import ClassDataset
from metafit.data.sampler import EpisodeSampler
from metafit.data.splits import load_split
from metafit.data.transforms import training_transform
from metafit.data.within import sampler_options
from metafit.distributed import DistContext, rank_seed, shard_sizes
from metafit.evaluation.feature_cache import cached_body
from metafit.execution.precision import set_tf32
from metafit.runs.trained import split_sampler

logger = logging.getLogger(__name__)

__all__ = ["samplers", "meta_batch_shares", "torch_settings", "frozen_body_cache"]


def samplers(recipe: Recipe, rank: int) -> tuple[EpisodeSampler, EpisodeSampler, int | None]:
    """The training sampler (this rank's seeded stream, augmented as the recipe asks:
    :func:`~metafit.data.transforms.training_transform`), the validation sampler and the
    number of training classes (``None`` for a task family).

    Raises:
        ValueError: the data cannot give the recipe's episodes (too few classes or
            examples).
    """
    train_ds, val_ds = load_split(recipe, "train"), load_split(recipe, "val")
    if recipe.train_on_val:
        logger.warning("%s: train_on_val: meta-training on the validation classes too; "
                       "validation figures are not about held-out classes (test stays "
                       "held out)", recipe.name)
    train_ds, groups, slots = sampler_options(recipe.episode_scheme, train_ds, train=True)
    train_sampler = EpisodeSampler(train_ds, recipe.ways, recipe.shots, recipe.queries,
                                   seed=rank_seed(recipe.seed, rank),
                                   transform=training_transform(recipe), groups=groups,
                                   slots=slots)
    classes = len(train_ds.classes) if isinstance(train_ds, ClassDataset) else None
    return train_sampler, split_sampler(recipe, "val", val_ds), classes


def meta_batch_shares(recipe: Recipe, ctx: DistContext) -> list[int]:
    """Tasks of the meta-batch each rank samples (every rank needs at least one)."""
    if recipe.meta_batch < ctx.world_size:
        raise ValueError(f"meta_batch={recipe.meta_batch} is smaller than the "
                         f"{ctx.world_size} processes of this run: every process needs at "
                         "least one task; raise meta_batch or use fewer processes")
    return shard_sizes(recipe.meta_batch, ctx.world_size)


def torch_settings(recipe: Recipe) -> None:
    """The recipe's ``threads`` (if set) and, on CUDA, ``cudnn_benchmark`` and a ``tf32``
    precision (:func:`~metafit.execution.precision.set_tf32`), for this process."""
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    if recipe.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = recipe.cudnn_benchmark
    set_tf32(recipe.precision, recipe.device)


def frozen_body_cache(model: nn.Module) -> AbstractContextManager[Any]:
    """While nothing in ``model.body`` is trained (the ``head`` adapt scope, a frozen
    encoder), its features of each training example are computed once for all iterations
    (:mod:`metafit.evaluation.feature_cache`; yields the cache, or ``None``)."""
    body = getattr(model, "body", None)
    if body is None or any(p.requires_grad for p in body.parameters()):
        return nullcontext()
    return cached_body(model)
