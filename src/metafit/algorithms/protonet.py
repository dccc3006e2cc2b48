"""Prototypical Networks (Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot
Learning").

``model.body`` embeds the examples; a class prototype is the mean embedding of its support
examples; the logits of a query are the negative squared Euclidean distances to the
prototypes (the paper's choice) or, with ``distance="cosine"``, the scaled cosine
similarities ``s * cos(f, p)`` (the cosine classifier of Gidaris & Komodakis 2018 and Chen
et al. 2019, "A Closer Look at Few-shot Classification", with a fixed scale as in Oreshkin
et al. 2018, TADAM, or learned, starting from that value, as in Meta-Baseline: Chen et al.
2021, "Meta-Baseline: Exploring Simple Meta-Learning for Few-Shot Learning"); the loss is
cross-entropy on the query set. There is no inner loop: ``adapt``
computes the prototypes once (the number of steps is ignored), and ``model.head`` is not
used (its meta-gradients are zeros). With ``classifier="logistic"``, ``adapt`` fits a
logistic-regression head on the support embeddings instead of the prototypes
(:mod:`metafit.algorithms.heads`, Tian et al. 2020); meta-training is unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit import functional as mf
from metafit.algorithms.base import Algorithm
from metafit.algorithms.heads import LogisticHead, check_classifier, logistic_trajectory
from metafit.algorithms.learner import Learner
from metafit.algorithms.registry import register_algorithm
from metafit.episodes import Episodes
from metafit.execution.program import BatchForm
from metafit.execution.settings import Execution
from metafit.functional import Params
from metafit.models.base import FewShotModel
from metafit.models.blocks import once_differentiable_region

__all__ = ["DISTANCES", "PrototypeHead", "ProtoNet", "class_prototypes", "prototype_logits",
           "squared_distances"]

#: The distances ProtoNet supports.
DISTANCES = ("sqeuclidean", "cosine")


def class_prototypes(features: Tensor, labels: Tensor, ways: int) -> Tensor:
    """Mean feature of each class: ``features [B, F]``, ``labels [B]`` -> ``[ways, F]``."""
    one_hot = F.one_hot(labels, ways).to(features.dtype)  # [B, N]
    counts = one_hot.sum(0).clamp_min(1.0).unsqueeze(1)  # [N, 1]
    return one_hot.t() @ features / counts  # [N, F]


def squared_distances(features: Tensor, prototypes: Tensor) -> Tensor:
    """``||f_i - p_c||^2``: ``features [B, F]``, ``prototypes [N, F]`` -> ``[B, N]``."""
    diff = features.unsqueeze(1) - prototypes.unsqueeze(0)  # [B, N, F]
    return diff.pow(2).sum(-1)  # [B, N]


def prototype_logits(features: Tensor, prototypes: Tensor, distance: str = "sqeuclidean",
                     scale: float = 1.0) -> Tensor:
    """Logits of ``features [B, F]`` against ``prototypes [N, F]`` -> ``[B, N]``:
    ``-||f - p||^2`` (``sqeuclidean``) or ``scale * cos(f, p)`` (``cosine``)."""
    if distance == "sqeuclidean":
        return -squared_distances(features, prototypes)  # [B, N]
    if distance == "cosine":
        f = F.normalize(features, dim=-1)  # [B, F]
        p = F.normalize(prototypes, dim=-1)  # [N, F]
        return scale * f @ p.t()  # [B, N]
    raise ValueError(f"ProtoNet: unknown distance {distance!r}; supported: "
                     f"{', '.join(DISTANCES)}")


class PrototypeHead(nn.Module):
    """Head of an adapted ProtoNet: features ``[B, F]`` -> logits ``[B, N]`` by
    :func:`prototype_logits`; the prototypes ``[N, F]`` are a buffer."""

    def __init__(self, prototypes: Tensor, distance: str = "sqeuclidean",
                 scale: float = 1.0) -> None:
        super().__init__()
        self.prototypes: Tensor
        self.register_buffer("prototypes", prototypes)
        self.distance = distance
        self.scale = float(scale)

    def forward(self, features: Tensor) -> Tensor:
        return prototype_logits(features, self.prototypes, self.distance, self.scale)


@register_algorithm("protonet")
class ProtoNet(Algorithm):
    """Prototypical network on ``model.body``.

    Args:
        model: a ``FewShotModel``; its ``body`` is the embedding, its ``head`` is ignored.
        distance: ``"sqeuclidean"`` (the paper's choice) or ``"cosine"`` (scaled cosine
            similarity: suits encoders trained for cosine similarity, such as
            sentence-transformers; on BANKING77 it is what lifts ProtoNet above the frozen
            probe, see docs/text.md).
        scale: the cosine logits' scale (inverse temperature); ignored for
            ``sqeuclidean``. 20 suits all-MiniLM-L6-v2 (sentence-transformers'
            contrastive losses scale cosine similarities by 20 by default).
        learn_scale: meta-learn the cosine scale, starting from ``scale`` (the parameter
            ``log_scale``, its logarithm, so that it stays positive), as Meta-Baseline's
            meta stage does (Chen et al. 2021); ``distance="cosine"`` only.
        classifier: ``None`` (the prototypes) or ``"logistic"``: ``adapt`` fits a logistic
            regression on the L2-normalised support embeddings
            (:func:`~metafit.algorithms.heads.fit_logistic_head`); meta-training still
            uses the prototypes.
        penalty: the logistic head's L2 penalty on its weights.
        execution: how meta-batches run (:class:`~metafit.execution.Execution`).
    """

    supports_regression = False
    fixed_head = False
    accepts_classifier = True
    adapts_with_steps = False
    #: Batched, the body's weights are shared, so its convolutions see all tasks as one
    #: batch while each task's BatchNorm keeps its own statistics (pays off on a GPU).
    batch_form: ClassVar[BatchForm | None] = "vmap"
    cheap_query_scores = True  # query features are computed once per task

    def __init__(self, model: nn.Module, distance: str = "sqeuclidean",
                 scale: float = 10.0, classifier: str | None = None,
                 penalty: float = 1e-4, execution: Execution | None = None,
                 learn_scale: bool = False) -> None:
        super().__init__(model, execution=execution)
        check_classifier(classifier, penalty, "ProtoNet")
        if distance not in DISTANCES:
            raise ValueError(f"ProtoNet: unknown distance {distance!r}; supported: "
                             f"{', '.join(DISTANCES)}")
        if not scale > 0:
            raise ValueError(f"ProtoNet: the cosine scale must be positive, got {scale}")
        if learn_scale and distance != "cosine":
            raise ValueError("ProtoNet: learn_scale learns the cosine logits' scale; it "
                             f"needs distance='cosine', not {distance!r}")
        self.distance = distance
        self._fixed_scale = float(scale)
        #: ``[]``, the logarithm of the learned cosine scale (``learn_scale``), else None.
        dtype = next((p.dtype for p in model.parameters()), torch.get_default_dtype())
        self.log_scale = (nn.Parameter(torch.tensor(math.log(scale), dtype=dtype))
                          if learn_scale else None)
        self.classifier = classifier
        self.penalty = float(penalty)

    @property
    def scale(self) -> float:
        """The cosine logits' scale now (the learned one with ``learn_scale``)."""
        if self.log_scale is None:
            return self._fixed_scale
        return float(self.log_scale.detach().exp())

    def _scores(self, features: Tensor, prototypes: Tensor) -> Tensor:
        if self.log_scale is None:
            return prototype_logits(features, prototypes, self.distance,
                                    self._fixed_scale)  # [B, N]
        # the learned scale multiplies the unit-scale cosines, so its gradient flows
        return self.log_scale.exp() * prototype_logits(features, prototypes, "cosine")

    def _logits(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                ways: int | None = None) -> tuple[Tensor, Tensor]:
        """Query logits ``[N*Q, N]`` and prototypes ``[N, F]``; ``ways`` (default: counted
        from ``support_y``) must be given under ``vmap``, which cannot read a value."""
        body = self.model.body
        with once_differentiable_region():
            f_support = body(support_x).flatten(1)  # [N*K, F]
            f_query = body(query_x).flatten(1)  # [N*Q, F]
        n = int(support_y.max()) + 1 if ways is None else ways
        prototypes = class_prototypes(f_support, support_y, n)  # [N, F]
        return self._scores(f_query, prototypes), prototypes  # [N*Q, N], [N, F]

    def batch_loss(self, episodes: Episodes, chunk_size: int | None
                   ) -> tuple[Tensor, Tensor]:
        """Mean query cross-entropy over the T tasks at once (``vmap``) and the scores
        ``[T]``; the same values as the per-task :meth:`task_loss` (tested)."""
        ways = episodes.ways if episodes.classes is None else episodes.classes.shape[1]

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            logits, _ = self._logits(sx, sy, qx, ways)  # [N*Q, N]
            return mf.loss_fn(logits, qy), logits

        losses, logits = torch.func.vmap(one_task, chunk_size=chunk_size)(
            episodes.support_x, episodes.support_y, episodes.query_x, episodes.query_y
        )  # [T], [T, N*Q, N]
        scores = torch.stack([mf.score(o.detach(), y) for o, y in zip(
            logits, episodes.query_y, strict=True)])  # [T]
        return losses.mean(), scores  # [], [T]

    def task_loss(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy of the query logits ``[N*Q, N]`` (graph back to the body)."""
        logits, _ = self._logits(support_x, support_y, query_x)  # [N*Q, N]
        return mf.loss_fn(logits, query_y), logits

    def trajectory(
        self, support_x: Tensor, support_y: Tensor, steps: int, query_x: Tensor | None = None
    ) -> Iterator[tuple[Params, Tensor | None]]:
        """The prototypes (or the logistic head), ``steps + 1`` times (nothing changes with
        steps)."""
        if support_y.is_floating_point():
            raise ValueError("ProtoNet does not support regression tasks")
        if self.classifier == "logistic":
            yield from logistic_trajectory(self.model.body, support_x, support_y, steps,
                                           query_x, self.penalty)
            return
        with torch.no_grad():
            f_support = self.model.body(support_x).flatten(1)  # [N*K, F]
            prototypes = class_prototypes(f_support, support_y, int(support_y.max()) + 1)
            out = None
            if query_x is not None:
                f_query = self.model.body(query_x).flatten(1)  # [N*Q, F]
                out = self._scores(f_query, prototypes)  # [N*Q, N]
        params = {"body." + n: p.detach() for n, p in self.model.body.named_parameters()}
        params["head.prototypes"] = prototypes  # [N, F]
        for _ in range(steps + 1):
            yield params, out

    def make_learner(self, params: Params, support_y: Tensor, copy: bool = True) -> Learner:
        """Body + :class:`PrototypeHead` holding the prototypes (or a
        :class:`~metafit.algorithms.heads.LogisticHead`)."""
        head: nn.Module
        if "head.weight" in params:
            ways, features = params["head.weight"].shape  # [N, F]
            head = LogisticHead(features, ways, device="meta")  # weights come from params
        else:
            prototypes = params["head.prototypes"]  # [N, F]
            ways, features = prototypes.shape
            head = PrototypeHead(prototypes, self.distance, self.scale)
        module = FewShotModel(self.model.body, head, features)
        return Learner(module, params, copy)
