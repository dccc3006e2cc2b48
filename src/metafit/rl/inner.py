"""One inner gradient step for T tasks at once, over per-task parameter sets.

The parameters are ``[T, *param]`` (:func:`metafit.rl.policies.per_task`); ``losses(params)``
returns the T per-task losses. The gradient of their *sum* with respect to the per-task
parameters is, row by row, each task's own gradient, so a single ``torch.autograd.grad``
gives all T inner gradients, and the update is :func:`metafit.functional.sgd_update`, the
rule every supervised inner loop uses::

    theta_{k+1}[i] = theta_k[i] - rate(n, k) * d losses(theta_k)[i] / d theta_k[i]

``create_graph=True`` keeps the graph of the gradient (second-order MAML, Finn et al.
2017); ``False`` detaches it, so the result still depends on ``theta_k`` through the
identity path only (first-order MAML).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from metafit.functional import Params, Rates, sgd_update

__all__ = ["inner_update"]


def inner_update(params: Mapping[str, Tensor], losses: Callable[[Params], Tensor], step: int,
                 rates: Rates, *, create_graph: bool) -> Params:
    """The per-task parameters after one gradient step on ``losses`` (``[T]``).

    Parameters that do not require grad (graph-free adaptation) are detached and made to;
    the result then depends on nothing outside. Runs with gradients enabled even under
    ``torch.no_grad()``.
    """
    with torch.enable_grad():
        current = {n: p if p.requires_grad else p.detach().requires_grad_()
                   for n, p in params.items()}
        total = losses(current).sum()  # [] = sum over tasks
        grads = torch.autograd.grad(total, list(current.values()), create_graph=create_graph,
                                    allow_unused=True, materialize_grads=True)
        return sgd_update(current, dict(zip(current, grads, strict=True)), step, rates)
