"""Prototypical Networks (Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot
Learning").

``model.body`` embeds the examples; a class prototype is the mean embedding of its support
examples; the logits of a query are the negative squared Euclidean distances to the
prototypes; the loss is cross-entropy on the query set. There is no inner loop: ``adapt``
computes the prototypes once (the number of steps is ignored), and ``model.head`` is not
used (its meta-gradients are zeros).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit import functional as mf
from metafit.algorithms.base import Algorithm, Learner
from metafit.algorithms.registry import register_algorithm
from metafit.functional import Params
from metafit.kernels import once_differentiable_region
from metafit.models.base import FewShotModel

__all__ = ["PrototypeHead", "ProtoNet", "class_prototypes", "squared_distances"]


def class_prototypes(features: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Mean feature of each class: ``features [B, F]``, ``labels [B]`` -> ``[ways, F]``."""
    one_hot = F.one_hot(labels, ways).to(features.dtype)  # [B, N]
    counts = one_hot.sum(0).clamp_min(1.0).unsqueeze(1)  # [N, 1]
    return one_hot.t() @ features / counts  # [N, F]


def squared_distances(features: Tensor, prototypes: Tensor) -> Tensor:
    """``||f_i - p_c||^2``: ``features [B, F]``, ``prototypes [N, F]`` -> ``[B, N]``."""
    diff = features.unsqueeze(1) - prototypes.unsqueeze(0)  # [B, N, F]
    return diff.pow(2).sum(-1)  # [B, N]


class PrototypeHead(nn.Module):
    """Head of an adapted ProtoNet: features ``[B, F]`` -> logits ``-||f - p||^2 [B, N]``;
    the prototypes ``[N, F]`` are a buffer."""

    def __init__(self, prototypes: Tensor) -> None:
        super().__init__()
        self.prototypes: Tensor
        self.register_buffer("prototypes", prototypes)

    def forward(self, features: Tensor) -> Tensor:
        return -squared_distances(features, self.prototypes)  # [B, N]


@register_algorithm("protonet")
class ProtoNet(Algorithm):
    """Prototypical network on ``model.body``.

    Args:
        model: a ``FewShotModel``; its ``body`` is the embedding, its ``head`` is ignored.
        distance: ``"sqeuclidean"`` (the paper's choice; the only one implemented).
    """

    supports_regression = False

    cheap_query_scores = True  # query features are computed once per task

    def __init__(self, model: nn.Module, distance: str = "sqeuclidean") -> None:
        super().__init__(model)
        if distance != "sqeuclidean":
            raise ValueError(f"ProtoNet: unknown distance {distance!r}; supported: 'sqeuclidean'")
        self.distance = distance

    def _logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> tuple[Tensor,
                                                                                       Tensor]:
        body = self.model.body
        with once_differentiable_region():
            f_support = body(support_x).flatten(1)  # [N*K, F]
            f_query = body(query_x).flatten(1)  # [N*Q, F]
        prototypes = class_prototypes(f_support, support_y, int(support_y.max()) + 1)  # [N, F]
        return -squared_distances(f_query, prototypes), prototypes  # [N*Q, N], [N, F]

    def task_loss(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the query logits ``[N*Q, N]`` (graph back to the body)."""
        logits, _ = self._logits(support_x, support_y, query_x)  # [N*Q, N]
        return mf.loss_fn(logits, query_y), logits

    def trajectory(
        self, support_x: Tensor, support_y: Tensor, steps: int, query_x: Tensor | None = None
    ) -> Iterator[tuple[Params, Tensor | None]]:
        """The prototypes, ``steps + 1`` times (nothing changes with steps)."""
        if support_y.is_floating_point():
            raise ValueError("ProtoNet does not support regression tasks")
        with torch.no_grad():
            f_support = self.model.body(support_x).flatten(1)  # [N*K, F]
            prototypes = class_prototypes(f_support, support_y, int(support_y.max()) + 1)
            out = None
            if query_x is not None:
                f_query = self.model.body(query_x).flatten(1)  # [N*Q, F]
                out = -squared_distances(f_query, prototypes)  # [N*Q, N]
        params = {"body." + n: p.detach() for n, p in self.model.body.named_parameters()}
        params["head.prototypes"] = prototypes  # [N, F]
        for _ in range(steps + 1):
            yield params, out

    def make_learner(self, params: Params, support_y: Tensor) -> Learner:
        """Body + :class:`PrototypeHead` holding the prototypes."""
        prototypes = params["head.prototypes"]  # [N, F]
        module = FewShotModel(self.model.body, PrototypeHead(prototypes), prototypes.shape[1])
        return Learner(module, params)
