"""The inner loop of T tasks at once: ``vmap`` over the task axis, ``torch.func.grad`` for
the inner gradient. Same values as the per-task loop of :mod:`metafit.functional.inner`
(tested), whose update rule (:func:`~metafit.functional.inner.sgd_update`) it shares.

Shapes: a task axis first: ``support_x [T, N*K, *x]``, ``support_y [T, N*K]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from metafit.functional.inner import (
    Params,
    Rates,
    forward,
    loss_fn,
    minibatch,
    sgd_update,
    task_loss,
)

__all__ = ["batched_query_losses", "batched_sgd", "functional_descent"]


def functional_descent(model: nn.Module, fixed: Mapping[str, Tensor], params: Params, x: Tensor,
                       y: Tensor, steps: int, rates: Rates, *, first_order: bool = False,
                       batch_size: int | None = None) -> Params:
    """The inner loop written with ``torch.func.grad``, for use under ``vmap``: ``steps``
    :func:`sgd_update` steps of ``params`` (the adapted tensors; ``fixed`` the others) on
    :func:`minibatch` ``(x, y, s, batch_size)``. Same values as :func:`descent`.

    Why two inner loops: ``torch.autograd.grad`` (:func:`inner_step`) cannot run under
    ``vmap`` (tested), and ``torch.func.grad`` on the per-task path would bypass the fused
    conv-block kernels (:mod:`metafit.models.blocks`), which detect ``torch.func``
    transforms and step aside; both share :func:`step_rate`, :func:`sgd_update` and
    :func:`minibatch`.
    """
    def loss(q: Params, xb: Tensor, yb: Tensor) -> Tensor:
        return task_loss(model, {**fixed, **q}, xb, yb)

    for s in range(steps):
        xb, yb = minibatch(x, y, s, batch_size)  # [b, *x], [b]
        g = torch.func.grad(loss)(params, xb, yb)
        if first_order:
            g = {n: v.detach() for n, v in g.items()}
        params = sgd_update(params, g, s, rates)
    return params


def batched_query_losses(
    model: nn.Module,
    params: Mapping[str, Tensor],
    support_x: Tensor,
    support_y: Tensor,
    query_x: Tensor,
    query_y: Tensor,
    steps: int,
    lr: float | Tensor,
    *,
    first_order: bool = False,
    lr_per_param: Mapping[str, Tensor] | None = None,
    lslr: Mapping[str, Tensor] | None = None,
    adapt_names: Iterable[str] | None = None,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """The inner loop of T tasks at once: ``vmap`` over the task axis, with
    ``torch.func.grad`` for the inner gradient (so the outer ``torch.autograd.grad``
    differentiates through it: second order unless ``first_order``).

    ``support_x [T, N*K, *x]``, ``support_y [T, N*K]``, ``query_x [T, N*Q, *x]``,
    ``query_y [T, N*Q]`` -> query losses ``[T]`` and query outputs ``[T, N*Q, out]``.
    Computes the same values as :func:`inner_loop` per task (tested); faster for models
    without convolutions, whose vmapped per-task weights become grouped convolutions.
    ``chunk_size``: tasks per vectorised call (``vmap(chunk_size=...)``), bounding memory.
    """
    names = list(params) if adapt_names is None else [n for n in adapt_names if n in params]
    fixed = {n: p for n, p in params.items() if n not in names}
    adapted0 = {n: params[n] for n in names}
    rates = Rates(lr, lr_per_param, lslr)

    def one_task(p: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor
                 ) -> tuple[Tensor, Tensor]:
        p = functional_descent(model, fixed, p, sx, sy, steps, rates, first_order=first_order)
        out = forward(model, {**fixed, **p}, qx)  # [N*Q, out]
        return loss_fn(out, qy), out

    losses, outs = torch.func.vmap(one_task, in_dims=(None, 0, 0, 0, 0), chunk_size=chunk_size)(
        adapted0, support_x, support_y, query_x, query_y)
    return losses, outs  # [T], [T, N*Q, out]


def batched_sgd(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float,
    *,
    adapt_names: Iterable[str] | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
) -> Params:
    """Graph-free gradient descent on T tasks at once (``vmap`` over the task axis): the
    last item of :func:`adaptation_trajectory` for every task.

    ``x [T, B, *x]``, ``y [T, B]`` (or float targets ``[T, B, *y]``); ``params`` shared by
    the tasks (detached first). Returns the adapted tensors stacked on a task axis,
    ``[T, *param]``, for the adapted names, and the others unchanged (no task axis).
    ``batch_size``: rows ``s*b .. s*b+b-1`` (cyclic) at step s, as in the trajectory.
    ``chunk_size``: tasks per vectorised call, bounding memory.
    """
    names = list(params) if adapt_names is None else [n for n in adapt_names if n in params]
    fixed = {n: p.detach() for n, p in params.items() if n not in names}
    start = {n: params[n].detach() for n in names}

    def one_task(sx: Tensor, sy: Tensor) -> Params:
        return functional_descent(model, fixed, start, sx, sy, steps, Rates(lr),
                                  batch_size=batch_size)

    with torch.no_grad():
        adapted = torch.func.vmap(one_task, chunk_size=chunk_size)(x, y)  # {name: [T, *p]}
    return {**fixed, **adapted}
