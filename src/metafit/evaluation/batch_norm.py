"""BatchNorm statistics chosen per row: scoring inputs the way a deployed model does.

The backbones normalise with the statistics of the batch they see (``track_running_stats
=False``, the MAML convention, Finn et al. 2017), so scoring a task's query set as one batch
is *transductive*: each query's output depends on the other queries. A deployed model
(:mod:`metafit.deploy.materialise`, ``batch_norm="support"``) normalises every input with
the statistics of the support set instead.

:func:`row_statistics` evaluates a module whose BatchNorm layers take each row's mean and
(biased) variance from a function of the layer's whole input, so that one forward pass of
``cat(support, inputs)`` can give each input the statistics a deployment would use:

* :func:`reference_rows` ``(s)``: every row with the statistics of the first ``s`` rows
  (the support set): what a deployed ``"support"`` model computes, in one pass instead of
  materialise's two (support statistics stored, then inputs scored in eval mode).

:func:`deployed_logits` scores inputs that way with an adapted learner; the episode
protocol (:func:`metafit.evaluation.protocol.evaluate`) uses it for its deployed setting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["StatsFn", "batch_norm_layers", "channel_moments", "deployed_logits",
           "has_batch_norm", "reference_rows", "row_statistics"]

StatsFn = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``x [B, C, *] -> (mean [B, C], var [B, C])``: the statistics that normalise each row of a
BatchNorm layer's input (biased variance, as training-mode BatchNorm uses)."""


def batch_norm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch-statistics BatchNorm layer of ``module`` (layers with running
    statistics, a pretrained image encoder's, normalise every row alike)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and not m.track_running_stats]


def has_batch_norm(module: nn.Module) -> bool:
    """Whether ``module`` holds a batch-statistics BatchNorm layer."""
    return bool(batch_norm_layers(module))


def channel_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and biased variance ``[C]`` of ``x [B, C, *]`` over all but the channel axis."""
    dims = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=dims, correction=0)  # [C], [C]
    return mean, var


def reference_rows(rows: int) -> StatsFn:
    """Statistics of the first ``rows`` rows (the support set), for every row."""
    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = channel_moments(x[:rows])  # [C], [C]
        b = x.shape[0]
        return mean.expand(b, -1), var.expand(b, -1)  # [B, C]

    return stats


def _normalise(bn: nn.modules.batchnorm._BatchNorm, stats: StatsFn, x: Tensor) -> Tensor:
    """``bn`` on ``x [B, C, *]`` with the per-row statistics ``stats(x)``."""
    mean, var = stats(x)  # [B, C]
    shape = (*mean.shape, *([1] * (x.dim() - 2)))  # [B, C, 1, ...]
    y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + bn.eps)
    if bn.affine:
        tail = [1] * (x.dim() - 2)
        y = y * bn.weight.reshape(-1, *tail) + bn.bias.reshape(-1, *tail)
    return y


@contextmanager
def row_statistics(module: nn.Module, stats: StatsFn) -> Iterator[None]:
    """Inside the block, every BatchNorm layer of ``module`` normalises each row of its
    input ``x`` with ``stats(x)`` (its own affine weights, also under a functional call
    with other parameters). Nothing is stored; the layers are restored on exit. The layers
    claim running statistics meanwhile, which keeps the fused first conv block
    (:mod:`metafit.models.blocks`, batch statistics of its own) from bypassing them.
    Not for concurrent use of the same module from several threads."""
    layers = batch_norm_layers(module)
    saved: list[tuple[Any, bool]] = []
    try:
        for bn in layers:
            saved.append((bn, bn.track_running_stats))
            bn.forward = partial(_normalise, bn, stats)  # type: ignore[method-assign]
            bn.track_running_stats = True
        yield
    finally:
        for bn, tracked in saved:
            del bn.forward
            bn.track_running_stats = tracked


def deployed_logits(model: nn.Module, learner: Callable[[Tensor], Tensor], support_x: Tensor,
                    x: Tensor) -> Tensor:
    """Outputs ``[M, out]`` of ``learner`` (a callable running ``model``'s layers, e.g. an
    adapted :class:`~metafit.algorithms.learner.Learner`) for inputs ``x [M, *x]``, each
    normalised at every BatchNorm layer of ``model`` with the statistics of ``support_x
    [S, *x]``: the outputs of the model :func:`~metafit.deploy.materialise.materialise`
    deploys with ``batch_norm="support"``, computed in one pass over
    ``cat(support_x, x)``."""
    rows = support_x.shape[0]
    with row_statistics(model, reference_rows(rows)):
        return learner(torch.cat([support_x, x]))[rows:]  # [M, out]
