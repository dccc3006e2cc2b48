"""The model contract shared by every backbone.

Every model is a plain ``nn.Module`` with two children: ``body`` (input -> feature vector
``[B, F]``) and ``head`` (``[B, F]`` -> ``[B, out]``, or ``nn.Identity`` for an embedding
network). ANIL adapts only ``head.*``, ProtoNet uses ``body`` alone, FineTune refits
``head``. Models hold no state beyond their parameters: BatchNorm layers are built with
``track_running_stats=False``, so they always normalise with the statistics of the batch
they see (per-task batch statistics, as in the MAML paper; nothing is carried from one task
to another). All of them work under ``torch.func.functional_call`` and ``vmap``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["FewShotModel", "feature_dim", "count_parameters"]


class FewShotModel(nn.Module):
    """``head(body(x))``. ``feature_dim``: F, the width of ``body``'s output."""

    def __init__(self, body: nn.Module, head: nn.Module, feature_dim: int) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, *in]`` -> ``[B, out]`` (``[B, F]`` when the head is the identity)."""
        return self.head(self.body(x))  # [B, out]


def feature_dim(body: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Width of ``body``'s flattened output for one input of shape ``in_shape``."""
    with torch.no_grad():
        was_training = body.training
        body.eval()
        out = body(torch.zeros(2, *in_shape))  # [2, F]
        body.train(was_training)
    return int(out.reshape(2, -1).shape[1])


def make_head(feature_dim: int, out_features: int | None) -> nn.Module:
    """A linear head, or the identity for an embedding network (``out_features=None``)."""
    return nn.Identity() if out_features is None else nn.Linear(feature_dim, out_features)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
