"""Multi-layer perceptron, e.g. the 1-40-40-1 ReLU network of the MAML sinusoid
experiment (Finn et al. 2017, sec. 5.1).

Shapes: ``x [B, in_features]`` -> features ``[B, hidden]`` -> ``[B, out_features]``.
"""

from __future__ import annotations

from torch import nn

from metafit.models.base import FewShotModel, make_head

__all__ = ["mlp"]


def mlp(
    in_features: int = 1,
    out_features: int | None = 1,
    hidden: int = 40,
    depth: int = 2,
) -> FewShotModel:
    """``depth`` hidden layers of width ``hidden`` with ReLU, then a linear head."""
    if depth < 1 or hidden < 1 or in_features < 1:
        raise ValueError(f"mlp needs depth, hidden, in_features >= 1, got {depth}, {hidden}, "
                         f"{in_features}")
    layers: list[nn.Module] = [nn.Flatten()] if in_features > 1 else []
    width = in_features
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return FewShotModel(nn.Sequential(*layers), make_head(width, out_features), width)
