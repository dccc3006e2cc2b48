"""The linear feature baseline of Duan et al. 2016 ("Benchmarking Deep Reinforcement
Learning for Continuous Control", supplementary material), as used by pytorch-maml-rl.

Per task, ``V(s_t) = phi_t . w`` with features
``phi_t = [s, s^2, t/100, (t/100)^2, (t/100)^3, 1]`` (zero after the episode ends), and ``w``
fitted by ridge regression of the discounted returns on the task's own trajectories:
``w = (X^T X + c I)^-1 X^T G``. Where the regularised matrix is still not positive
definite for a task, ``c`` is multiplied by 10 (at least 1e-8) for that task, up to
``attempts`` times; a task that still fails gets the baseline 0 (logged).
All T tasks are fitted at once (batched Cholesky), in float64.

Shapes: observations ``[H, T, B, obs]``, masks and returns ``[H, T, B]``, features
``[H, T, B, F]`` with ``F = 2 obs + 4``, weights ``[T, F]``.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from metafit.rl.trajectories import Trajectories

__all__ = ["baseline_features", "fit_linear_baseline", "linear_baseline_values"]

log = logging.getLogger(__name__)


def baseline_features(observations: Tensor, masks: Tensor) -> Tensor:
    """The features ``phi [H, T, B, 2 obs + 4]`` of each step, zero where masked."""
    horizon = observations.shape[0]
    t = torch.arange(horizon, dtype=observations.dtype, device=observations.device) / 100.0
    t = t.view(horizon, 1, 1, 1).expand(*observations.shape[:3], 1)  # [H, T, B, 1]
    ones = torch.ones_like(t)
    phi = torch.cat([observations, observations.square(), t, t.square(), t.pow(3), ones], -1)
    return phi * masks.unsqueeze(-1)  # [H, T, B, F]


def fit_linear_baseline(features: Tensor, returns: Tensor, masks: Tensor, reg: float = 1e-5,
                        attempts: int = 5) -> Tensor:
    """Per-task ridge weights ``[T, F]`` regressing ``returns [H, T, B]`` on
    ``features [H, T, B, F]`` over the masked steps (see the module docstring)."""
    h, t, b, f = features.shape
    x = (features * masks.unsqueeze(-1)).double().permute(1, 0, 2, 3).reshape(t, h * b, f)
    y = (returns * masks).double().permute(1, 0, 2).reshape(t, h * b, 1)  # [T, N, 1]
    xtx = x.transpose(1, 2) @ x  # [T, F, F]
    xty = x.transpose(1, 2) @ y  # [T, F, 1]
    eye = torch.eye(f, dtype=xtx.dtype, device=xtx.device)
    coeff = torch.full((t, 1, 1), reg, dtype=xtx.dtype, device=xtx.device)  # [T, 1, 1]
    for _ in range(attempts):
        chol, info = torch.linalg.cholesky_ex(xtx + coeff * eye)  # [T, F, F], [T]
        failed = info != 0  # [T]
        if not bool(failed.any()):
            break
        coeff = torch.where(failed.view(t, 1, 1), (coeff * 10).clamp_min(1e-8), coeff)
    else:
        log.warning("linear baseline: %d task(s) still singular after %d attempts; their "
                    "baseline is 0", int(failed.sum()), attempts)
    weights = torch.cholesky_solve(xty, chol).squeeze(-1)  # [T, F]
    weights = torch.where(failed.view(t, 1) | ~weights.isfinite(), 0.0, weights)
    return weights.to(features.dtype)


def linear_baseline_values(trajectories: Trajectories, returns: Tensor, reg: float = 1e-5
                           ) -> Tensor:
    """The baseline fitted on ``trajectories`` and their ``returns [H, T, B]``, evaluated on
    the same steps: ``[H, T, B]`` (0 where masked)."""
    phi = baseline_features(trajectories.observations, trajectories.masks)  # [H, T, B, F]
    weights = fit_linear_baseline(phi, returns, trajectories.masks, reg)  # [T, F]
    return torch.einsum("htbf,tf->htb", phi, weights)
