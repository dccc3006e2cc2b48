"""The outer optimizer of meta-training, its learning-rate schedule, and its step.

The algorithm computes meta-gradients; any torch optimizer steps on them (optax-style:
the algorithm computes, the optimizer updates).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from metafit.config.recipe import Recipe

__all__ = ["lr_factor", "outer_optimizer", "outer_step"]


def lr_factor(recipe: Recipe) -> Callable[[int], float]:
    """Multiplier of ``outer_lr`` at step i: linear warm-up, then constant/cosine/linear."""
    warm, total, kind = recipe.warmup, recipe.iterations, recipe.lr_schedule

    def factor(i: int) -> float:
        if warm and i < warm:
            return (i + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (i - warm) / max(1, total - warm))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress  # linear decay to 0 (Reptile's annealed outer step)

    return factor


def outer_optimizer(recipe: Recipe, params: list[nn.Parameter]
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The recipe's optimizer over ``params`` (a placeholder parameter when there are
    none) and its schedule (:func:`lr_factor`)."""
    params = params or [nn.Parameter(torch.zeros(0))]
    if recipe.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=recipe.outer_lr,
                                                     weight_decay=recipe.weight_decay)
    else:
        cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
        opt = cls(params, lr=recipe.outer_lr, weight_decay=recipe.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(recipe))


def outer_step(module: nn.Module, grads: dict[str, Tensor], params: list[nn.Parameter],
               optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler,
               grad_clip: float | None) -> float | None:
    """Set ``grads`` (keyed like ``module.named_parameters()``) as the gradients, clip
    ``params`` to global norm ``grad_clip`` (if set), step and advance the schedule.
    Returns the norm before clipping (``None`` without a clip)."""
    named = dict(module.named_parameters())
    for name, g in grads.items():
        named[name].grad = g
    norm = None
    if grad_clip:
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    return norm
