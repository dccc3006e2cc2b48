"""Discounted returns, generalised advantage estimation and masked statistics, over the
time axis of ``[H, ...]`` tensors.

Both sums are one matrix product with the upper-triangular discount matrix
``M[i, j] = c^(j - i)`` (j >= i), not a loop over time steps:

* returns (reward-to-go): ``G_t = sum_{j >= t} gamma^(j-t) r_j``;
* GAE (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
  Advantage Estimation"): ``delta_t = r_t + gamma V(s_{t+1}) m_{t+1} - V(s_t)`` and
  ``A_t = sum_{j >= t} (gamma lambda)^(j-t) delta_j``.

Masks ``m [H, ...]`` (1 while the episode runs, then 0 for good) cut both sums at the end of
an episode; the value after the last step of the horizon is taken as 0 (pytorch-maml-rl's
convention: the horizon is treated as the end).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["discount_matrix", "discounted_returns", "gae", "masked_mean", "masked_normalize"]


def discount_matrix(horizon: int, factor: float, dtype: torch.dtype | None = None,
                    device: torch.device | None = None) -> Tensor:
    """``[H, H]`` with ``M[i, j] = factor^(j - i)`` for ``j >= i`` and 0 below the
    diagonal."""
    steps = torch.arange(horizon, device=device)
    gap = (steps.unsqueeze(0) - steps.unsqueeze(1)).to(dtype or torch.get_default_dtype())
    return torch.where(gap >= 0, torch.as_tensor(factor, dtype=gap.dtype) ** gap.clamp_min(0),
                       torch.zeros((), dtype=gap.dtype))


def _discounted_sum(x: Tensor, factor: float) -> Tensor:
    m = discount_matrix(x.shape[0], factor, x.dtype, x.device)  # [H, H]
    return torch.tensordot(m, x, dims=1)  # [H, ...]


def discounted_returns(rewards: Tensor, masks: Tensor, gamma: float) -> Tensor:
    """Reward-to-go ``G_t`` of ``rewards [H, ...]`` within each episode (``masks [H, ...]``):
    ``[H, ...]``, 0 where the mask is 0."""
    return _discounted_sum(rewards * masks, gamma) * masks


def gae(rewards: Tensor, values: Tensor, masks: Tensor, gamma: float, lam: float) -> Tensor:
    """Generalised advantage estimates ``[H, ...]`` from ``rewards``, baseline ``values`` of
    the observations at each step and ``masks`` (all ``[H, ...]``). ``lam=1`` gives
    ``G_t - V(s_t)``, ``lam=0`` the one-step TD error."""
    v = values * masks  # [H, ...]
    v_next = torch.cat([v[1:], torch.zeros_like(v[:1])])  # [H, ...], V(s_{t+1}) m_{t+1}
    deltas = (rewards + gamma * v_next - v) * masks  # [H, ...]
    return _discounted_sum(deltas, gamma * lam) * masks


def masked_mean(x: Tensor, masks: Tensor, dims: Sequence[int]) -> Tensor:
    """Mean of ``x`` over ``dims`` counting only entries where ``masks`` is 1."""
    return (x * masks).sum(dim=tuple(dims)) / masks.sum(dim=tuple(dims)).clamp_min(1.0)


def masked_normalize(x: Tensor, masks: Tensor, dims: Sequence[int], eps: float = 1e-8
                     ) -> Tensor:
    """``(x - mean) / (std + eps)`` with mean and (population) std over ``dims`` of the
    masked entries; masked-out entries become 0."""
    axes = sorted(d % x.dim() for d in dims)
    mean = masked_mean(x, masks, axes)
    for d in axes:
        mean = mean.unsqueeze(d)
    centred = (x - mean) * masks
    var = masked_mean(centred.square(), masks, axes)
    for d in axes:
        var = var.unsqueeze(d)
    return centred / (var.sqrt() + eps)
