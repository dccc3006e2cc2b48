"""Advantages of a trajectory batch, as pytorch-maml-rl computes them for both the inner
(support) and the outer (query) loss: discounted returns, the linear feature baseline
fitted per task on the same trajectories, GAE, then per-task normalisation over the
task's steps (mean 0, std 1 over ``[H, B]``)."""

from __future__ import annotations

from metafit.rl.baseline import linear_baseline_values
from metafit.rl.returns import discounted_returns, gae, masked_normalize
from metafit.rl.trajectories import Trajectories

__all__ = ["with_advantages"]


def with_advantages(trajectories: Trajectories, gamma: float = 0.99, gae_lambda: float = 1.0,
                    normalize: bool = True, baseline: bool = True, baseline_reg: float = 1e-5
                    ) -> Trajectories:
    """``trajectories`` with ``advantages [H, T, B]`` set (no graph).

    Args:
        gamma, gae_lambda: discount and GAE lambda (pytorch-maml-rl: 0.99 and 1.0).
        normalize: standardise each task's advantages over its masked steps.
        baseline: subtract the linear feature baseline (else ``values = 0``, so with
            ``gae_lambda=1`` the advantages are the discounted returns).
        baseline_reg: the ridge coefficient of the baseline fit.
    """
    rewards, masks = trajectories.rewards, trajectories.masks  # [H, T, B]
    if baseline:
        returns = discounted_returns(rewards, masks, gamma)  # [H, T, B]
        values = linear_baseline_values(trajectories, returns, baseline_reg)  # [H, T, B]
    else:
        values = rewards.new_zeros(rewards.shape)
    advantages = gae(rewards, values, masks, gamma, gae_lambda)  # [H, T, B]
    if normalize:
        advantages = masked_normalize(advantages, masks, dims=(0, 2))
    return trajectories.replace(advantages=advantages.detach())
