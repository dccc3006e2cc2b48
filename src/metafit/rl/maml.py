"""MAML for reinforcement learning (Finn et al. 2017, "Model-Agnostic Meta-Learning for
Fast Adaptation of Deep Networks", sec. 5.3) and its first-order variant.

A meta-RL *episode* of T tasks interleaves rollouts and adaptation (DESIGN.md §8)::

    theta_0 = theta                                    (one copy per task, [T, *param])
    for k in 0..K-1:
        support_k ~ pi_{theta_k}                       rollout, B trajectories per task
        theta_{k+1} = theta_k - alpha grad REINFORCE(theta_k; support_k)
    query ~ pi_{theta_K}

:meth:`MAMLRL.sample` runs that loop without an outer graph and returns a
:class:`MetaEpisode`; :meth:`MAMLRL.adapted` replays the inner steps on the stored
support trajectories with the graph back to the live parameters, and
:meth:`MAMLRL.surrogate` scores the query trajectories with the result. The outer step is
either :func:`metafit.rl.trpo.trpo_step` (MAML-TRPO, as in the paper and pytorch-maml-rl)
or any torch optimizer on :meth:`MAMLRL.meta_gradients`. As in the paper, the meta-gradient
does not differentiate the support trajectories' sampling distribution (the term ProMP,
Rothfuss et al. 2019, adds back).

The inner loss is REINFORCE (``inner_objective="vpg"``, the paper's) or ProMP's
low-variance curvature loss (``"lvc"``, Rothfuss et al. 2019): the same inner step, whose
second derivative (second-order meta-gradient) adds the per-step score outer products,
i.e. the sampling distribution's term of the inner step's Jacobian, without DiCE's
variance.

``inner_steps=0`` gives plain policy-gradient training on the task distribution: the
"pretrained" baseline of the paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from metafit.functional import Params, Rates
from metafit.rl.advantages import with_advantages
from metafit.rl.env import TensorEnv
from metafit.rl.inner import inner_update
from metafit.rl.objectives import Surrogate, lvc_losses, reinforce_losses, surrogate_losses
from metafit.rl.policies import Policy, per_task, policy_output
from metafit.rl.rollout import rollout
from metafit.rl.shard import TaskShard
from metafit.rl.trajectories import Trajectories

__all__ = ["INNER_OBJECTIVES", "MAMLRL", "MetaEpisode"]

#: The inner losses: REINFORCE (Finn et al. 2017) or ProMP's LVC (Rothfuss et al. 2019).
INNER_OBJECTIVES = ("vpg", "lvc")


@dataclass(frozen=True)
class MetaEpisode:
    """One meta-batch of T tasks: ``supports[k]`` sampled with the parameters after k inner
    steps, ``query`` with the parameters after all of them; every batch ``[H, T, B, ...]``
    carries advantages."""

    supports: tuple[Trajectories, ...]
    query: Trajectories

    def returns(self) -> Tensor:
        """Mean undiscounted return per task after 0..K inner steps: ``[T, K+1]``."""
        batches = (*self.supports, self.query)
        return torch.stack([b.returns().mean(dim=-1) for b in batches], dim=1)


class MAMLRL(nn.Module):
    """MAML with a policy-gradient inner loop; owns the policy (parameter names start with
    ``"policy."``).

    Args:
        policy: the :class:`~metafit.rl.policies.Policy` to meta-train.
        inner_lr: the inner step size alpha (0.1 for 2D navigation, pytorch-maml-rl).
        inner_steps: inner steps K during meta-training (1 in the paper's experiments).
        first_order: detach the inner gradients (first-order MAML).
        gamma, gae_lambda: discount and GAE lambda of the advantages (0.99, 1.0).
        normalize_advantages: standardise each task's advantages.
        baseline_reg: ridge coefficient of the linear feature baseline.
        inner_objective: ``"vpg"`` (REINFORCE) or ``"lvc"`` (ProMP's low-variance
            curvature loss, :func:`~metafit.rl.objectives.lvc_losses`): the same inner step,
            a different second-order meta-gradient.
        inner_lr_decay: the rate of every inner step after the first is ``inner_lr *
            inner_lr_decay`` (1: one rate; the MAML authors' evaluation on 2D navigation
            adapted at 0.5 and then 0.25, cbfinn/maml_rl ``test_maml_point.py``).
        meta_trained: False for a learner that is never trained (the "scratch" baseline:
            the training loop validates it once and saves it, as for the supervised
            ``finetune``); the trainers and callbacks read it, like the supervised
            algorithms' capability flag of the same name.
    """

    def __init__(self, policy: Policy, inner_lr: float = 0.1, inner_steps: int = 1,
                 first_order: bool = False, gamma: float = 0.99, gae_lambda: float = 1.0,
                 normalize_advantages: bool = True, baseline_reg: float = 1e-5,
                 meta_trained: bool = True, inner_objective: str = "vpg",
                 inner_lr_decay: float = 1.0) -> None:
        super().__init__()
        self.meta_trained = meta_trained
        if inner_steps < 0:
            raise ValueError(f"inner_steps must be non-negative, got {inner_steps}")
        if inner_objective not in INNER_OBJECTIVES:
            raise ValueError(f"inner_objective must be one of {', '.join(INNER_OBJECTIVES)}, "
                             f"got {inner_objective!r}")
        self.inner_objective = inner_objective
        self.policy = policy
        if not (math.isfinite(inner_lr_decay) and inner_lr_decay > 0):
            raise ValueError(f"inner_lr_decay must be > 0, got {inner_lr_decay}")
        self.inner_lr = inner_lr
        self.inner_lr_decay = inner_lr_decay
        self.inner_steps = inner_steps
        self.first_order = first_order
        self.gamma, self.gae_lambda = gamma, gae_lambda
        self.normalize_advantages = normalize_advantages
        self.baseline_reg = baseline_reg

    @property
    def rates(self) -> Rates:
        """The inner learning rate of the first step (one scalar)."""
        return Rates(self.inner_lr)

    def rates_at(self, step: int) -> Rates:
        """The inner learning rate of step ``step`` (0-based): ``inner_lr``, then
        ``inner_lr * inner_lr_decay``."""
        return self.rates if step == 0 else Rates(self.inner_lr * self.inner_lr_decay)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """``named_parameters()`` restricted to those with ``requires_grad``."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def initial_params(self, num_tasks: int, graph: bool = True) -> Params:
        """The policy's parameters, one copy per task ``[T, *param]``: a view of the live
        parameters (``graph``) or detached."""
        params: dict[str, Tensor] = dict(self.policy.named_parameters())
        if not graph:
            params = {n: p.detach() for n, p in params.items()}
        return per_task(params, num_tasks)

    def process(self, trajectories: Trajectories) -> Trajectories:
        """``trajectories`` with their advantages (baseline fitted on them)."""
        return with_advantages(trajectories, self.gamma, self.gae_lambda,
                               self.normalize_advantages, baseline_reg=self.baseline_reg)

    def inner_step(self, params: Params, support: Trajectories, step: int, graph: bool,
                   old: Tensor | None = None) -> Params:
        """One policy-gradient step of every task on its ``support`` trajectories.
        ``graph``: keep the graph of the inner gradient (unless ``first_order``).
        ``old [H, T, B, D]``: with the LVC loss, the outputs of the policy that sampled
        ``support`` (importance-weights the step when ``params`` have moved since, as
        ProMP's later PPO steps do); ``None``: the current policy, detached."""
        def losses(p: Params) -> Tensor:
            if self.inner_objective == "lvc":
                return lvc_losses(self.policy, p, support, old)  # [T]
            return reinforce_losses(self.policy, p, support)  # [T]

        return inner_update(params, losses, step, self.rates_at(step),
                            create_graph=graph and not self.first_order)

    def sample(self, env: TensorEnv, trajectories: int, generator: torch.Generator,
               steps: int | None = None, shard: TaskShard | None = None) -> MetaEpisode:
        """Roll out and adapt ``steps`` times (default ``inner_steps``) in ``env``'s T
        tasks, ``trajectories`` per task and step, without an outer graph. With ``shard``
        (``torchrun``): only the shard's block of the T tasks, drawing what one process
        draws (:mod:`metafit.rl.shard`); the episode holds the block's ``Tb`` tasks."""
        steps = self.inner_steps if steps is None else steps
        params = self.initial_params(env.num_tasks if shard is None else shard.size,
                                     graph=False)
        supports = []
        for k in range(steps):
            support = self.process(rollout(env, self.policy, params, trajectories, generator,
                                           shard))
            supports.append(support)
            params = _detached(self.inner_step(params, support, k, graph=False))
        query = self.process(rollout(env, self.policy, params, trajectories, generator,
                                     shard))
        return MetaEpisode(tuple(supports), query)

    def adapted(self, episode: MetaEpisode, graph: bool = True,
                olds: tuple[Tensor, ...] | None = None) -> Params:
        """The per-task parameters after the episode's inner steps, replayed from the live
        parameters: with the graph back to them (``graph``) or detached. ``olds``: the
        sampling policies' outputs on each support (:meth:`sampling_outputs`), for the
        LVC loss's importance ratio."""
        params = self.initial_params(episode.query.num_tasks, graph=graph)
        for k, support in enumerate(episode.supports):
            old = None if olds is None else olds[k]
            params = self.inner_step(params, support, k, graph=graph, old=old)
            if not graph:
                params = _detached(params)
        return params

    def sampling_outputs(self, episode: MetaEpisode) -> tuple[Tensor, ...]:
        """The outputs ``[H, T, B, D]`` of the policies that sampled each support and the
        query, recomputed without a graph from the live parameters (which must not have
        changed since :meth:`sample`): ``(support_0, ..., support_{K-1}, query)``."""
        with torch.no_grad():
            params = self.initial_params(episode.query.num_tasks, graph=False)
            outs = []
            for k, support in enumerate(episode.supports):
                outs.append(policy_output(self.policy, params, support.observations))
                params = _detached(self.inner_step(params, support, k, graph=False))
            outs.append(policy_output(self.policy, params, episode.query.observations))
        return tuple(outs)

    def surrogate(self, episode: MetaEpisode, old: Tensor | None = None, graph: bool = True
                  ) -> Surrogate:
        """The outer surrogate and KL on the query trajectories (see
        :func:`~metafit.rl.objectives.surrogate_losses`); ``graph=False`` evaluates it
        without an outer graph (line searches)."""
        params = self.adapted(episode, graph=graph)
        with torch.set_grad_enabled(graph):
            return surrogate_losses(self.policy, params, episode.query, old)

    def meta_gradients(self, episode: MetaEpisode
                       ) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Gradients of the mean surrogate loss (the policy gradient at the adapted
        parameters, carried back through the inner loop), keyed like
        :meth:`trainable_parameters`, and metrics. Writes no ``.grad``."""
        params = self.trainable_parameters()
        loss = self.surrogate(episode).loss
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True,
                                    materialize_grads=True)
        returns = episode.returns()  # [T, K+1]
        metrics = {"loss": float(loss.detach()), "return_before": float(returns[:, 0].mean()),
                   "return_after": float(returns[:, -1].mean())}
        return {n: g.detach() for n, g in zip(params, grads, strict=True)}, metrics


def _detached(params: Params) -> Params:
    return {n: p.detach() for n, p in params.items()}
