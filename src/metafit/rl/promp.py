"""ProMP: Proximal Meta-Policy Search (Rothfuss et al. 2019, ICLR; Algorithm 1, eq. 4-6).

One meta-batch is sampled as for MAML (:meth:`MAMLRL.sample
<metafit.rl.maml.MAMLRL.sample>`: support_k ~ pi_{theta_k^o}, the inner steps, query ~
pi_{theta'^o}), with the learner's inner loss set to the low-variance curvature (LVC) loss
(:func:`~metafit.rl.objectives.lvc_losses`). Then ``ppo_steps`` Adam steps, without new
samples, on::

    L(theta) = mean_T  -mean_{t,b} min(r A, clip(r, 1 - eps, 1 + eps) A)
               + eta * mean_k mean_T KL(pi_{theta_k^o} || pi_{theta_k(theta)})  on support_k
    r = pi_{theta'(theta)}(a | s) / pi_{theta'^o}(a | s)                      on the query

where ``theta_k(theta)`` are the inner steps replayed from the live parameters with the
graph (second order), each LVC step importance-weighted by the policy that sampled its
support (``pi_theta / pi_{theta_k^o}``: ProMP's code; at the first PPO step this is
``pi_theta / stopgrad(pi_theta)``). The clipped term (Schulman et al. 2017) bounds the
change of the adapted policies, the KL term (weight ``eta``, fixed: the paper's
experiments turn ProMP's adaptive schedule off) that of the pre-adaptation policies, whose
samples the inner steps reuse. The KL is between the policy that sampled each support and
the current one at that step, as in the paper's ``D_KL(pi_theta_o, pi_theta)`` and its
code, not between the pre- and post-adaptation policies.

The step is first order in cost (gradients and one double backward through the inner
step, no Hessian-vector products or line search, unlike TRPO) and keeps Adam's moments
from one meta-batch to the next (:meth:`ProMPOuterStep.state_dict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metafit.rl.maml import MAMLRL, MetaEpisode
from metafit.rl.policies import Policy, policy_output
from metafit.rl.returns import masked_mean
from metafit.rl.trajectories import Trajectories

__all__ = ["ProMPObjective", "ProMPOuterStep", "ProMPSettings", "clipped_surrogate_losses",
           "promp_objective"]

_STEPS = (0, 2)  # the time and trajectory axes of [H, T, B]


@dataclass(frozen=True)
class ProMPSettings:
    """ProMP's outer step (defaults: the PPO paper's clip 0.2, ProMP's 5 steps, eta 5e-4
    and Adam rate 1e-3; its experiments clip at 0.3)."""

    clip_eps: float = 0.2
    ppo_steps: int = 5
    inner_kl_penalty: float = 5e-4
    lr: float = 1e-3

    def __post_init__(self) -> None:
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        if self.ppo_steps < 1:
            raise ValueError(f"ppo_steps must be at least 1, got {self.ppo_steps}")
        if not (self.inner_kl_penalty >= 0 and math.isfinite(self.inner_kl_penalty)):
            raise ValueError(f"inner_kl_penalty must be >= 0, got {self.inner_kl_penalty}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")


def clipped_surrogate_losses(policy: Policy, params: dict[str, Tensor],
                             trajectories: Trajectories, old: Tensor, clip_eps: float
                             ) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate loss of ``params [T, *param]`` against the sampling policy's
    outputs ``old [H, T, B, D]``: ``-mean over each task's steps of min(r A, clip(r, 1 -
    eps, 1 + eps) A)``, ``[T]``, and the fraction of steps where the clip is active (its
    gradient is 0 there), ``[T]``."""
    out = policy_output(policy, params, trajectories.observations)  # [H, T, B, D]
    ratio = torch.exp(policy.log_prob(out, trajectories.actions)
                      - policy.log_prob(old, trajectories.actions))  # [H, T, B]
    adv = trajectories.advantages  # [H, T, B]
    if adv is None:
        raise ValueError("these trajectories carry no advantages: call with_advantages first")
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    objective = torch.minimum(ratio * adv, clipped * adv)  # [H, T, B]
    active = (clipped * adv < ratio * adv).to(ratio.dtype).detach()
    masks = trajectories.masks
    return (-masked_mean(objective, masks, _STEPS), masked_mean(active, masks, _STEPS))


@dataclass(frozen=True)
class ProMPObjective:
    """ProMP's loss on one meta-batch at the current parameters.

    loss: scalar, ``clip_losses.mean() + eta * inner_kls.mean()``; clip_losses: ``[T]``;
    inner_kls: ``[K, T]`` mean ``KL(pi_{theta_k^o} || pi_{theta_k})`` on each support
    (``[0, T]`` without inner steps); clip_fraction: ``[T]`` (see
    :func:`clipped_surrogate_losses`).
    """

    loss: Tensor
    clip_losses: Tensor
    inner_kls: Tensor
    clip_fraction: Tensor


def promp_objective(algo: MAMLRL, episode: MetaEpisode, olds: tuple[Tensor, ...],
                    settings: ProMPSettings, graph: bool = True) -> ProMPObjective:
    """ProMP's loss (module docstring) of ``algo``'s live parameters on ``episode``;
    ``olds``: :meth:`MAMLRL.sampling_outputs <metafit.rl.maml.MAMLRL.sampling_outputs>`
    of the episode, taken before the first update. ``graph=False``: values only."""
    policy = algo.policy
    tasks = episode.query.num_tasks
    params = algo.initial_params(tasks, graph=graph)
    kls = []
    for k, support in enumerate(episode.supports):
        with torch.set_grad_enabled(graph):
            out = policy_output(policy, params, support.observations)  # [H, T, B, D]
            kls.append(masked_mean(policy.kl(olds[k], out), support.masks, _STEPS))  # [T]
        params = algo.inner_step(params, support, k, graph=graph, old=olds[k])
        if not graph:
            params = {n: p.detach() for n, p in params.items()}
    with torch.set_grad_enabled(graph):
        clip, fraction = clipped_surrogate_losses(policy, params, episode.query, olds[-1],
                                                  settings.clip_eps)
        inner = torch.stack(kls) if kls else clip.new_zeros(0, tasks)  # [K, T]
        loss = clip.mean() + settings.inner_kl_penalty * (inner.mean() if kls else 0.0)
    return ProMPObjective(loss, clip, inner, fraction)


class ProMPOuterStep:
    """ProMP's outer step: ``ppo_steps`` Adam steps on :func:`promp_objective` per
    meta-batch. It holds the Adam optimizer over ``algo``'s trainable parameters, so it is
    built for one learner, and its state (Adam's moments and step counts) is what a
    checkpoint saves in the optimizer's place: a resumed run takes the same steps."""

    def __init__(self, algo: MAMLRL, settings: ProMPSettings) -> None:
        self.settings = settings
        self.params = list(algo.trainable_parameters().values())
        self.optimizer = torch.optim.Adam(self.params, lr=settings.lr)

    def step(self, algo: MAMLRL, episode: MetaEpisode, shard: object | None = None
             ) -> dict[str, float]:
        """The PPO steps on ``episode`` (sampled with ``algo``'s current parameters), in
        place; one process only (``shard`` must be None: its gradients are not
        all-reduced across torchrun ranks yet). Metrics: ``loss`` (the objective before
        the first step), ``loss_after``,
        ``inner_kl`` (mean over steps and tasks after the last update), ``clip_fraction``
        (after it) and ``grad_norm`` (of the first step's gradient)."""
        if shard is not None:
            raise ValueError("promp does not run under torchrun yet (its Adam steps are not "
                             "all-reduced); train it in one process")
        cfg = self.settings
        live = list(algo.trainable_parameters().values())
        if len(live) != len(self.params) or any(
                a is not b for a, b in zip(live, self.params, strict=True)):
            raise ValueError("this ProMP outer step's Adam optimizer was built for another "
                             "learner's parameters")
        olds = algo.sampling_outputs(episode)
        first: ProMPObjective | None = None
        grad_norm = 0.0
        for i in range(cfg.ppo_steps):
            objective = promp_objective(algo, episode, olds, cfg)
            grads = torch.autograd.grad(objective.loss, self.params, allow_unused=True,
                                        materialize_grads=True)
            if i == 0:
                first = objective
                grad_norm = math.sqrt(sum(float(g.double().pow(2).sum()) for g in grads))
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g.detach()
            self.optimizer.step()
            for p in self.params:
                p.grad = None
        assert first is not None
        after = promp_objective(algo, episode, olds, cfg, graph=False)
        inner = after.inner_kls
        return {"loss": float(first.loss.detach()), "loss_after": float(after.loss),
                "inner_kl": float(inner.mean()) if inner.numel() else 0.0,
                "clip_fraction": float(after.clip_fraction.mean()), "grad_norm": grad_norm}

    def state_dict(self) -> dict[str, Any]:
        """Adam's state (moments, step counts, its settings)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        """Restore :meth:`state_dict`'s Adam state."""
        self.optimizer.load_state_dict(state)
