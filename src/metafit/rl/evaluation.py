"""Adaptation curves of meta-RL: the average return on fixed tasks after 0..k inner
policy-gradient steps, each step's trajectories sampled with the parameters it starts from
(as the MAML paper's Figure 4 plots them for 2D navigation)."""

from __future__ import annotations

import torch
from torch import Tensor

from metafit.rl.env import TensorEnv
from metafit.rl.maml import MAMLRL

__all__ = ["adaptation_returns"]


def adaptation_returns(algo: MAMLRL, env: TensorEnv, steps: int, trajectories: int,
                       generator: torch.Generator) -> Tensor:
    """Mean undiscounted return per task after 0..``steps`` inner steps of ``algo`` (its
    ``inner_lr``, then ``inner_lr * inner_lr_decay``; ``trajectories`` per task and step):
    ``[T, steps + 1]``. Uses no outer graph; any algorithm or initialisation (pretrained,
    random) wrapped in a :class:`~metafit.rl.MAMLRL` is fine-tuned the same way."""
    return algo.sample(env, trajectories, generator, steps=steps).returns()
