"""The TRPO outer step of MAML-TRPO (Schulman et al. 2015, "Trust Region Policy
Optimization", appendix C; as pytorch-maml-rl applies it to the meta-objective).

With ``g`` the gradient of the surrogate loss and ``F`` the Hessian of the mean KL between
the old and new (adapted) query policies, both at the current parameters:

1. ``x ~= F^-1 g`` by conjugate gradient on Hessian-vector products (``F`` never formed;
   ``F + damping I`` for stability);
2. the largest step along ``-x`` within the quadratic trust region:
   ``step = x * sqrt(2 max_kl / x^T F x)``;
3. backtracking line search: try ``theta - beta^i step`` for i = 0, 1, ... until the
   surrogate loss decreases and the exact mean KL stays below ``max_kl``; if no try
   passes, the parameters are left unchanged.

The step writes the parameters in place (it is an optimizer's step, not a gradient).
Second-order MAML differentiates the KL through the inner loop too, so its
Hessian-vector products are third derivatives of the policy's log-likelihood.

Under ``torchrun`` (a :class:`~metafit.rl.shard.TaskShard`), each rank's episode holds its
block of the meta-batch; the surrogate and KL are then ``sum over the block / T``, and
the gradient, every Hessian-vector product and every line-search evaluation are summed
over the ranks (one ``all_reduce`` each), so every rank computes the same direction and
accepts the same step. Without a shard the step is the one-process computation, op for op.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from metafit.rl.objectives import Surrogate
from metafit.rl.shard import TaskShard, local_sums

__all__ = ["TRPOSettings", "conjugate_gradient", "hessian_vector_product", "trpo_step"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TRPOSettings:
    """The outer step's settings (defaults: pytorch-maml-rl's 2D-navigation config)."""

    max_kl: float = 0.01
    cg_iters: int = 10
    cg_damping: float = 1e-5
    ls_max_steps: int = 15
    ls_backtrack_ratio: float = 0.8


class SurrogateProgram(Protocol):
    """What :func:`trpo_step` needs of an algorithm (e.g. :class:`~metafit.rl.MAMLRL`)."""

    def trainable_parameters(self) -> dict[str, nn.Parameter]: ...

    def surrogate(self, episode: Any, old: Tensor | None = None, graph: bool = True
                  ) -> Surrogate: ...


def flat(tensors: Sequence[Tensor]) -> Tensor:
    """The tensors' entries as one vector ``[sum of numels]``."""
    return torch.cat([t.reshape(-1) for t in tensors])


def assign(params: Sequence[nn.Parameter], vector: Tensor) -> None:
    """Write ``vector`` (as :func:`flat` lays it out) into ``params``, in place."""
    offset = 0
    with torch.no_grad():
        for p in params:
            p.copy_(vector[offset: offset + p.numel()].view_as(p))
            offset += p.numel()


def conjugate_gradient(mvp: Callable[[Tensor], Tensor], b: Tensor, iters: int = 10,
                       tol: float = 1e-10) -> Tensor:
    """Approximate solution of ``A x = b`` for symmetric positive definite ``A`` given as
    the product ``mvp(v) = A v``, starting from 0, after at most ``iters`` iterations
    (stops early once the squared residual is below ``tol``)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r.dot(r)
    for _ in range(iters):
        if float(rr) < tol:
            break
        ap = mvp(p)
        alpha = rr / p.dot(ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r.dot(r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def hessian_vector_product(scalar: Tensor, params: Sequence[Tensor], damping: float = 0.0,
                           reduce: Callable[[Tensor], Tensor] | None = None
                           ) -> Callable[[Tensor], Tensor]:
    """``v -> (d^2 scalar / d params^2) v + damping v`` (flat vectors), by double
    backward; the graph of ``scalar`` is kept for repeated products. ``reduce`` (e.g.
    :meth:`TaskShard.sum <metafit.rl.shard.TaskShard.sum>`) is applied to the Hessian's
    product before the damping is added: with ``scalar`` one rank's share of a sum, the
    product of the whole sum's Hessian."""
    grads = torch.autograd.grad(scalar, list(params), create_graph=True)
    flat_grad = flat(grads)

    def product(v: Tensor) -> Tensor:
        hv = flat(torch.autograd.grad(flat_grad.dot(v), list(params), retain_graph=True))
        hv = hv.detach()
        return (hv if reduce is None else reduce(hv)) + damping * v

    return product


def _objectives(surrogate: Surrogate, shard: TaskShard | None) -> tuple[Tensor, Tensor]:
    """The surrogate loss and KL this rank differentiates: the means over the tasks (one
    process) or the block's share of them (:func:`~metafit.rl.shard.local_sums`)."""
    if shard is None:
        return surrogate.loss, surrogate.kl
    return local_sums(surrogate.losses, shard), local_sums(surrogate.kls, shard)


def _summed(tensor: Tensor, shard: TaskShard | None) -> Tensor:
    """``tensor`` summed over the ranks (itself with one process)."""
    return tensor if shard is None else shard.sum(tensor)


def trpo_step(algo: SurrogateProgram, episode: object, settings: TRPOSettings | None = None,
              shard: TaskShard | None = None) -> dict[str, float]:
    """One TRPO step of ``algo``'s parameters on ``episode`` (see the module docstring).

    ``shard``: this rank's block of a distributed meta-batch (``episode`` holds the
    block's tasks); every rank must call this with its own block and takes the same step.

    Returns metrics: ``loss_before``, ``loss_after``, ``kl_after`` (the mean KL between the
    policies before and after, on the query trajectories), ``step_fraction`` (beta^i of
    the accepted try, 0 if none), ``line_search_steps`` and ``grad_norm`` (all over the
    whole meta-batch).
    """
    cfg = settings or TRPOSettings()
    params = list(algo.trainable_parameters().values())
    before = algo.surrogate(episode)
    old = before.out.detach()
    loss_t, kl_t = _objectives(before, shard)
    grad = _summed(flat(torch.autograd.grad(loss_t, params, retain_graph=True)).detach(),
                   shard)
    fvp = hessian_vector_product(kl_t, params, cfg.cg_damping,
                                 None if shard is None else shard.sum)
    direction = conjugate_gradient(fvp, grad, cfg.cg_iters)
    curvature = float(direction.dot(fvp(direction)))  # x^T F x
    loss_before = float(_summed(loss_t.detach(), shard))
    metrics = {"loss_before": loss_before, "loss_after": loss_before,
               "kl_after": 0.0, "step_fraction": 0.0, "line_search_steps": 0.0,
               "grad_norm": float(grad.norm())}
    if not (curvature > 0 and math.isfinite(curvature)):
        log.warning("TRPO: non-positive curvature %.3g along the step; no update", curvature)
        return metrics
    full_step = direction * math.sqrt(2 * cfg.max_kl / curvature)
    start = flat([p.detach() for p in params]).clone()
    fraction = 1.0
    for i in range(cfg.ls_max_steps):
        assign(params, start - fraction * full_step)
        with torch.no_grad():
            after = algo.surrogate(episode, old, graph=False)
            loss, kl = (float(v) for v in _summed(torch.stack(_objectives(after, shard)),
                                                  shard))
        if loss < metrics["loss_before"] and kl < cfg.max_kl:
            metrics.update(loss_after=loss, kl_after=kl, step_fraction=fraction,
                           line_search_steps=float(i + 1))
            return metrics
        fraction *= cfg.ls_backtrack_ratio
    assign(params, start)
    metrics["line_search_steps"] = float(cfg.ls_max_steps)
    log.info("TRPO: line search found no improving step within max_kl; no update")
    return metrics
