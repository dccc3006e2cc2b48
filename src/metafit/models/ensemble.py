"""Merge trained conv4 ProtoNets into one network that scores as their ensemble.

``K`` conv4 bodies of ``hidden`` filters side by side are one conv4 of ``K * hidden``
filters whose blocks after the first convolve ``K`` independent channel groups
(``conv_groups: K``, :func:`metafit.models.conv4.conv4`): the first block's filters are
the members' first filters stacked, each later convolution the members' kernels stacked as
the groups of a grouped convolution, every bias and BatchNorm affine parameter stacked.
BatchNorm normalises each channel alone (the batch or support statistics alike), ReLU and
max-pooling act per channel, so the merged body's features are the members' features
concatenated, member after member.

For ProtoNet's negative squared Euclidean distance (Snell et al. 2017) the squared distance
over concatenated features is the sum of the members' squared distances. The last block's
BatchNorm weight and bias are multiplied by ``1 / sqrt(K)`` (a positive factor passes
through ReLU and max-pooling), so the merged logits are the *mean* of the members' logits:
the ensemble that averages the members' log-probabilities up to a per-input constant, with
the same predictions and the members' temperature. Every deployment path (adapt, predict,
serve, ONNX) then runs one network of ``K`` times the width, with no ensemble code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["merge_conv4_states", "merge_head_states"]


def merge_conv4_states(states: Sequence[dict[str, Tensor]], depth: int,
                       prefix: str = "") -> dict[str, Tensor]:
    """The state of the ``conv_groups = K = len(states)`` conv4 body whose features are the
    members' features concatenated and scaled by ``1 / sqrt(K)``.

    Args:
        states: the members' state dicts, each with the keys
            ``{prefix}{i}.0.weight [h, c, 3, 3]``, ``{prefix}{i}.0.bias [h]`` (the
            convolution of block ``i``) and ``{prefix}{i}.1.weight``, ``{prefix}{i}.1.bias``
            ``[h]`` (its BatchNorm) for ``i < depth``, of equal shapes across members.
        depth: the blocks of each member.
        prefix: the keys' common prefix (``"model.body."`` in an algorithm's state).

    Returns:
        The same keys, each the members' tensors concatenated along the output channels
        (``[K * h, ...]``), the last block's BatchNorm weight and bias scaled by
        ``1 / sqrt(K)``. Keys outside the blocks are not returned.

    Raises:
        ValueError: fewer than two members, a missing key, or members of other shapes.
    """
    if len(states) < 2:
        raise ValueError(f"an ensemble merges at least two networks, got {len(states)}")
    scale = 1 / math.sqrt(len(states))
    merged: dict[str, Tensor] = {}
    for block in range(depth):
        for part in ("0.weight", "0.bias", "1.weight", "1.bias"):
            key = f"{prefix}{block}.{part}"
            missing = [i for i, s in enumerate(states) if key not in s]
            if missing:
                raise ValueError(f"member {missing[0]} has no {key}: not a conv4 body of "
                                 f"depth {depth}")
            shapes = {tuple(s[key].shape) for s in states}
            if len(shapes) > 1:
                raise ValueError(f"{key}: the members' shapes differ ({sorted(shapes)}); "
                                 "only networks of one architecture merge")
            value = torch.cat([s[key] for s in states])  # [K * h, ...]
            if block == depth - 1 and part.startswith("1."):
                value = value * scale
            merged[key] = value
    return merged


def merge_head_states(states: Sequence[dict[str, Tensor]],
                      prefix: str = "head.") -> dict[str, Tensor]:
    """The linear head over the merged features (:func:`merge_conv4_states`) whose logits
    are the mean of the members' head logits: the weights ``[out, h]`` side by side,
    scaled by ``1 / sqrt(K)`` (the features already carry the other ``1 / sqrt(K)``), the
    biases ``[out]`` averaged. ``{}`` when the members have no head.

    Raises:
        ValueError: some members have a head and others not, or heads of other shapes.
    """
    weight, bias = f"{prefix}weight", f"{prefix}bias"
    held = {(weight in s, bias in s) for s in states}
    if held == {(False, False)}:
        return {}
    if (len(held) > 1 or not next(iter(held))[0]
            or len({tuple(s[weight].shape) for s in states}) > 1):
        raise ValueError("the members' heads differ: only networks of one architecture "
                         "and one number of classes merge")
    scale = 1 / math.sqrt(len(states))
    merged = {weight: torch.cat([s[weight] for s in states], 1) * scale}  # [out, K * h]
    if bias in states[0]:
        merged[bias] = torch.stack([s[bias] for s in states]).mean(0)  # [out]
    return merged
