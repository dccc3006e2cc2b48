"""The outer optimizer of meta-training, its learning-rate schedule, and its step.

The algorithm computes meta-gradients; any torch optimizer steps on them (optax-style:
the algorithm computes, the optimizer updates). An ``fp16`` run's step goes through
:class:`DynamicLossScale` (dynamic loss scaling).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from metafit.config.recipe import Recipe

__all__ = ["DynamicLossScale", "lr_factor", "outer_optimizer", "outer_step"]


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


class DynamicLossScale:
    """Dynamic loss scaling for ``precision="fp16"`` (Micikevicius et al. 2018; the rule of
    ``torch.amp.GradScaler``): the algorithm differentiates ``scale * loss`` and divides
    the gradients by ``scale`` (:meth:`metafit.algorithms.Algorithm.gradients_of`); here,
    after each meta-gradient, a step whose gradients hold an inf or NaN is skipped and the
    scale halved, and after ``growth_interval`` finite steps in a row it is doubled.

    ``scale``: the algorithm's ``loss_scale`` buffer ``[]``, updated in place (a captured
    CUDA graph reads its storage). The scale is not checkpointed: a resumed fp16 run
    starts again from the initial scale (its first steps may be skipped again).
    """

    def __init__(self, scale: Tensor, growth_interval: int = 2000, factor: float = 2.0
                 ) -> None:
        if growth_interval < 1 or factor <= 1.0:
            raise ValueError(f"growth_interval must be >= 1 and factor > 1, got "
                             f"{growth_interval}, {factor}")
        self.scale, self.growth_interval, self.factor = scale, growth_interval, factor
        self.finite_steps = 0
        self.skipped = 0

    def finite(self, grads: dict[str, Tensor]) -> bool:
        """Whether every gradient is finite (one device read); updates the scale."""
        values = [g.isfinite().all() for g in grads.values()]
        ok = bool(torch.stack(values).all()) if values else True
        with torch.no_grad():
            if not ok:
                self.scale.div_(self.factor)
                self.finite_steps = 0
                self.skipped += 1
            else:
                self.finite_steps += 1
                if self.finite_steps == self.growth_interval:
                    self.scale.mul_(self.factor)
                    self.finite_steps = 0
        return ok
