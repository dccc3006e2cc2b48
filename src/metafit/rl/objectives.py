"""The policy-gradient losses of meta-RL, per task (``[T]``), over trajectories that carry
advantages (:func:`metafit.rl.advantages.with_advantages`).

* :func:`reinforce_losses` (Williams 1992, with a baseline): the inner loss of MAML-RL
  (Finn et al. 2017, sec. 5.3), ``-mean_{t,b} log pi(a_t | s_t) A_t`` over a task's steps.
  Its gradient is the policy-gradient estimate (exactly in expectation with unnormalised
  advantages, gamma = 1 and a baseline independent of the batch: tested).
* :func:`lvc_losses` (Rothfuss et al. 2019, "ProMP: Proximal Meta-Policy Search", eq. 4):
  the low-variance curvature inner loss ``-mean_{t,b} pi(a_t | s_t) / pi_old(a_t | s_t) A_t``
  with ``pi_old`` the sampling policy (``stopgrad(pi)`` by default). At the sampling
  parameters its gradient is :func:`reinforce_losses`'s; its Hessian adds the per-step
  score outer products ``grad log pi grad log pi^T A_t``, the part of the sampling
  distribution's derivative that ProMP keeps (DiCE keeps the cross-time terms too, at a
  higher variance).
* :func:`surrogate_losses` (Schulman et al. 2015, "Trust Region Policy Optimization"): the
  importance-weighted surrogate ``-mean ratio * A`` with ``ratio = pi / pi_old``, and the
  mean ``KL(pi_old || pi)`` over the same steps: the outer objective and constraint of
  MAML-TRPO. With ``old=None`` the old policy is the current one, detached (ratio 1,
  KL 0 with the Fisher matrix as its Hessian). pytorch-maml-rl writes ``KL(pi || pi_old)``;
  both agree to second order at ``pi = pi_old``, so the TRPO direction is the same and
  only the line search's acceptance test can differ.

Shapes: per-task parameters ``[T, *param]``; trajectories ``[H, T, B, ...]``; the policy's
outputs ``[H, T, B, D]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from metafit.rl.policies import Policy, policy_output
from metafit.rl.returns import masked_mean
from metafit.rl.trajectories import Trajectories

__all__ = ["Surrogate", "lvc_losses", "reinforce_losses", "surrogate_losses"]

_STEPS = (0, 2)  # the time and trajectory axes of [H, T, B]


def _advantages(trajectories: Trajectories) -> Tensor:
    if trajectories.advantages is None:
        raise ValueError("these trajectories carry no advantages: call with_advantages first")
    return trajectories.advantages  # [H, T, B]


def reinforce_losses(policy: Policy, params: Mapping[str, Tensor],
                     trajectories: Trajectories) -> Tensor:
    """``-mean over each task's steps of log pi(a | s) * A``: ``[T]``, with the graph back
    to ``params`` (``[T, *param]``)."""
    out = policy_output(policy, params, trajectories.observations)  # [H, T, B, D]
    logp = policy.log_prob(out, trajectories.actions)  # [H, T, B]
    return -masked_mean(logp * _advantages(trajectories), trajectories.masks, _STEPS)


def lvc_losses(policy: Policy, params: Mapping[str, Tensor], trajectories: Trajectories,
               old: Tensor | None = None) -> Tensor:
    """ProMP's low-variance curvature loss ``-mean over each task's steps of
    pi(a | s) / pi_old(a | s) * A``: ``[T]``, with the graph back to ``params``
    (``[T, *param]``). ``old [H, T, B, D]``: the sampling policy's outputs (``None``: the
    current ones, detached, so the ratio is 1 in value and ``grad log pi`` in gradient)."""
    out = policy_output(policy, params, trajectories.observations)  # [H, T, B, D]
    logp = policy.log_prob(out, trajectories.actions)  # [H, T, B]
    old_logp = logp.detach() if old is None else policy.log_prob(old, trajectories.actions)
    ratio = torch.exp(logp - old_logp)  # [H, T, B], one factor per time step (not DiCE's)
    return -masked_mean(ratio * _advantages(trajectories), trajectories.masks, _STEPS)


@dataclass(frozen=True)
class Surrogate:
    """The outer objective on the query trajectories.

    losses: ``[T]`` per-task surrogate losses; kls: ``[T]`` mean ``KL(pi_old || pi)``;
    out: ``[H, T, B, D]`` the policy's outputs (pass ``out.detach()`` as ``old`` to later
    evaluations of the same step).
    """

    losses: Tensor
    kls: Tensor
    out: Tensor

    @property
    def loss(self) -> Tensor:
        """Mean over tasks of :attr:`losses` (scalar)."""
        return self.losses.mean()

    @property
    def kl(self) -> Tensor:
        """Mean over tasks of :attr:`kls` (scalar)."""
        return self.kls.mean()


def surrogate_losses(policy: Policy, params: Mapping[str, Tensor], trajectories: Trajectories,
                     old: Tensor | None = None) -> Surrogate:
    """The importance-weighted surrogate and KL of ``params`` (``[T, *param]``) against
    the old policy's outputs ``old [H, T, B, D]`` (``None``: the current ones, detached)."""
    out = policy_output(policy, params, trajectories.observations)  # [H, T, B, D]
    old = out.detach() if old is None else old
    log_ratio = (policy.log_prob(out, trajectories.actions)
                 - policy.log_prob(old, trajectories.actions))  # [H, T, B]
    masks = trajectories.masks
    losses = -masked_mean(torch.exp(log_ratio) * _advantages(trajectories), masks, _STEPS)
    kls = masked_mean(policy.kl(old, out), masks, _STEPS)  # [T]
    return Surrogate(losses, kls, out)
