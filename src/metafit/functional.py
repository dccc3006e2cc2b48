"""The inner loop as pure functions over parameter dicts.

A model is used only through :func:`torch.func.functional_call`: parameters are data
(``dict[str, Tensor]``), so adapting to a task maps one dict to another and never mutates,
clones or deep-copies a module. The loss is chosen by the task: cross-entropy for integer
labels (classification), mean squared error for float targets (regression).

Gradient-based adaptation (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks")::

    theta_{s+1}[n] = theta_s[n] - rate(n, s) * d loss_support(theta_s) / d theta_s[n]

* second order: the inner gradient keeps its graph (``create_graph=True``), so the outer
  gradient differentiates through it (Hessian-vector products);
* first order (FOMAML): the inner gradient is detached; the adapted parameters still depend
  on the initial ones through the identity path ``theta_s -> theta_{s+1}``;
* ``rate(n, s)`` is the scalar ``lr``, or a learned tensor per parameter (Meta-SGD, Li et
  al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning"), or a learned
  scalar per parameter and step (LSLR of MAML++, Antoniou et al. 2019, "How to train your
  MAML").

Shapes: one task, no task axis: ``x [B, *x]``, ``y [B]`` (long) or ``[B, *y]`` (float).
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metafit.models.blocks import native_batch_norms, once_differentiable_region

__all__ = [
    "Params",
    "accuracy",
    "adaptation_trajectory",
    "batched_sgd",
    "batched_query_losses",
    "final",
    "forward",
    "has_convolutions",
    "loops_over_tasks",
    "batch_tasks_by_default",
    "per_task_only",
    "inner_loop",
    "inner_step",
    "loss_fn",
    "minibatch",
    "score",
    "step_rate",
    "task_loss",
]

Params = dict[str, Tensor]
"""Parameter name (as in ``module.named_parameters()``) -> tensor."""


def forward(model: nn.Module, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``model`` evaluated with ``params`` in place of its own: ``x [B, *x]`` -> ``[B, out]``.

    Names missing from ``params`` use the module's own tensors.
    """
    return functional_call(model, dict(params), (x,))  # [B, out]


def loss_fn(out: Tensor, y: Tensor) -> Tensor:
    """Cross-entropy for long labels ``y [B]`` (``out [B, C]`` logits); mean squared error
    for float targets (``out`` reshaped to ``y``'s shape, e.g. ``[B, 1]``). Scalar."""
    if y.is_floating_point():
        return F.mse_loss(out.reshape(y.shape), y)
    return F.cross_entropy(out, y)


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    """Fraction of rows whose arg-max equals the label: ``logits [B, C]``, ``y [B]`` ->
    scalar float tensor."""
    return (logits.argmax(dim=-1) == y).to(torch.get_default_dtype()).mean()


def score(out: Tensor, y: Tensor) -> Tensor:
    """The task's evaluation metric, without a graph: accuracy for long labels, mean squared
    error for float targets. Scalar."""
    with torch.no_grad():
        return loss_fn(out, y) if y.is_floating_point() else accuracy(out, y)


def task_loss(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    """Loss of ``model`` with ``params`` on one task's examples ``x [B, *x]``, ``y [B]``."""
    return loss_fn(forward(model, params, x), y)


def step_rate(
    name: str,
    step: int,
    lr: float | Tensor,
    lr_per_param: Mapping[str, Tensor] | None = None,
    lslr: Mapping[str, Tensor] | None = None,
) -> float | Tensor:
    """The inner learning rate of parameter ``name`` at inner step ``step``.

    ``lr_per_param[name]`` (Meta-SGD: same shape as the parameter) wins over
    ``lslr[name][step]`` (MAML++: a ``[steps]`` vector; steps past its end reuse its last
    entry), which wins over the scalar ``lr``.
    """
    if lr_per_param is not None and name in lr_per_param:
        return lr_per_param[name]  # [*param]
    if lslr is not None and name in lslr:
        rates = lslr[name]  # [steps]
        return rates[min(step, rates.shape[0] - 1)]  # []
    return lr


def inner_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    lr: float | Tensor,
    *,
    step: int = 0,
    first_order: bool = False,
    lr_per_param: Mapping[str, Tensor] | None = None,
    lslr: Mapping[str, Tensor] | None = None,
    adapt_names: Iterable[str] | None = None,
) -> Params:
    """One gradient step on the support loss: ``theta - rate * grad``.

    Args:
        model: the module, used functionally only.
        params: the current parameters (all of them, or those that differ from the module).
        x, y: support examples ``[B, *x]`` and labels ``[B]`` (or float targets).
        lr: scalar inner learning rate (used where no learned rate is given).
        step: index of this inner step (selects the MAML++ rate).
        first_order: detach the inner gradient (no second derivatives).
        lr_per_param, lslr: learned rates, see :func:`step_rate`.
        adapt_names: the parameters to adapt (default: every key of ``params``); the others
            pass through unchanged (ANIL-style partial adaptation).

    Returns:
        a new dict; ``params`` is not modified. Runs with gradients enabled even when called
        under ``torch.no_grad()`` (evaluation needs the inner gradient).
    """
    names = list(params) if adapt_names is None else [n for n in adapt_names if n in params]
    with torch.enable_grad():
        current = {
            n: (p if p.requires_grad or n not in names else p.detach().requires_grad_())
            for n, p in params.items()
        }
        region = once_differentiable_region() if first_order else contextlib.nullcontext()
        with region:  # a first-order step differentiates its forward once
            loss = task_loss(model, current, x, y)
        grads = torch.autograd.grad(
            loss,
            [current[n] for n in names],
            create_graph=not first_order,
            allow_unused=True,
            materialize_grads=True,
        )
        new = dict(current)
        for n, g in zip(names, grads, strict=True):
            rate = step_rate(n, step, lr, lr_per_param, lslr)
            new[n] = current[n] - rate * g  # [*param]
    return new


def inner_loop(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float | Tensor,
    first_order: bool = False,
    lr_per_param: Mapping[str, Tensor] | None = None,
    lslr: Mapping[str, Tensor] | None = None,
    adapt_names: Iterable[str] | None = None,
) -> Params:
    """``steps`` calls of :func:`inner_step` on the full support set ``x [B, *x]``, ``y [B]``.

    With ``params`` the module's live parameters and ``first_order=False`` the result keeps
    the whole graph back to them (MAML); with ``first_order=True`` only the identity path
    (FOMAML). ``steps=0`` returns ``params`` unchanged (as a new dict).
    """
    names = None if adapt_names is None else list(adapt_names)
    current = dict(params)
    for s in range(steps):
        current = inner_step(
            model, current, x, y, lr, step=s, first_order=first_order,
            lr_per_param=lr_per_param, lslr=lslr, adapt_names=names,
        )
    return current


def _detached(rates: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
    return None if rates is None else {n: r.detach() for n, r in rates.items()}


def adaptation_trajectory(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    y: Tensor,
    steps: int,
    lr: float | Tensor,
    lr_per_param: Mapping[str, Tensor] | None = None,
    lslr: Mapping[str, Tensor] | None = None,
    adapt_names: Iterable[str] | None = None,
    query_x: Tensor | None = None,
    batch_size: int | None = None,
) -> Iterator[tuple[Params, Tensor | None]]:
    """Plain (graph-free) gradient descent on one task, yielding after 0..``steps`` steps.

    Used at evaluation (``adapt``, adaptation curves) and by Reptile: each step is a
    first-order :func:`inner_step` whose result is detached, so no outer graph grows.

    Args:
        model, params, x, y, lr, lr_per_param, lslr, adapt_names: as in :func:`inner_loop`
            (params and rates are detached first).
        steps: number of steps; ``steps + 1`` items are yielded.
        query_x: ``[Bq, *x]``; when given, each item carries the model's output on it,
            ``[Bq, out]`` (computed without a graph).
        batch_size: examples per step; step s uses rows ``s*b .. s*b+b-1`` of ``x`` taken
            cyclically (deterministic, no hidden random state). ``None``: the full batch.

    Yields:
        ``(params_s, query_out_s)`` with detached ``params_s``; ``query_out_s`` is ``None``
        without ``query_x``.
    """
    names = None if adapt_names is None else list(adapt_names)
    current: Params = {n: p.detach() for n, p in params.items()}
    per_param, per_step = _detached(lr_per_param), _detached(lslr)
    rate = lr.detach() if isinstance(lr, Tensor) else lr
    for s in range(steps + 1):
        out = None
        if query_x is not None:
            with torch.no_grad(), once_differentiable_region():
                out = forward(model, current, query_x)  # [Bq, out]
        yield current, out
        if s == steps:
            return
        xb, yb = minibatch(x, y, s, batch_size)  # [b, *x], [b]
        stepped = inner_step(
            model, current, xb, yb, rate, step=s, first_order=True,
            lr_per_param=per_param, lslr=per_step, adapt_names=names,
        )
        current = {n: p.detach() for n, p in stepped.items()}


def minibatch(x: Tensor, y: Tensor, step: int, batch_size: int | None
              ) -> tuple[Tensor, Tensor]:
    """The examples of inner step ``step``: rows ``step*b .. step*b+b-1`` of ``x [B, *x]``,
    ``y [B]`` taken cyclically (deterministic, no hidden random state); the full batch
    when ``batch_size`` is ``None`` or not smaller than B."""
    n_examples = x.shape[0]
    if batch_size is None or batch_size >= n_examples:
        return x, y
    rows = (torch.arange(batch_size, device=x.device) + step * batch_size) % n_examples  # [b]
    return x[rows], y[rows]  # [b, *x], [b]


def final(trajectory: Iterator[tuple[Params, Tensor | None]]) -> tuple[Params, Tensor | None]:
    """The last ``(params, query_out)`` of an adaptation trajectory."""
    last = deque(trajectory, maxlen=1)
    if not last:
        raise ValueError("empty adaptation trajectory")
    return last[0]


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

    def one_task(p: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor
                 ) -> tuple[Tensor, Tensor]:
        def support_loss(q: Params) -> Tensor:
            return task_loss(model, {**fixed, **q}, sx, sy)

        for s in range(steps):
            g = torch.func.grad(support_loss)(p)
            if first_order:
                g = {n: v.detach() for n, v in g.items()}
            p = {n: p[n] - step_rate(n, s, lr, lr_per_param, lslr) * g[n] for n in p}
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
        def loss(q: Params, xb: Tensor, yb: Tensor) -> Tensor:
            return task_loss(model, {**fixed, **q}, xb, yb)

        p = start
        for s in range(steps):
            xb, yb = minibatch(sx, sy, s, batch_size)
            g = torch.func.grad(loss)(p, xb, yb)
            p = {n: p[n] - lr * g[n] for n in p}
        return p

    with torch.no_grad():
        adapted = torch.func.vmap(one_task, chunk_size=chunk_size)(x, y)  # {name: [T, *p]}
    return {**fixed, **adapted}


def has_convolutions(model: nn.Module) -> bool:
    """True if ``model`` holds a convolution (where per-task vmap is slower on CPU)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def loops_over_tasks(model: nn.Module) -> bool:
    """True where the tasks of a batch must run one by one rather than under ``vmap``:
    models with convolutions (slower under vmap on a CPU) and models with a module marked
    ``per_task_only = True`` (a text encoder cuts each batch to its longest text: control
    flow on data, which vmap cannot trace)."""
    return has_convolutions(model) or per_task_only(model)


def batch_tasks_by_default(model: nn.Module, second_order: bool = False) -> bool:
    """The ``batching="auto"`` rule: whether the tasks of a meta-batch run under one
    ``vmap``. On a CPU, for models without convolutions (:func:`loops_over_tasks`); on a GPU,
    where the per-task loop is bound by kernel launches, for every model ``vmap`` can run:
    none marked :func:`per_task_only`, and at ``second_order`` none with a fused BatchNorm
    (:func:`~metafit.models.blocks.native_batch_norms`)."""
    first = next(model.parameters(), None)
    if first is None or first.device.type == "cpu":
        return not loops_over_tasks(model)
    return not per_task_only(model) and not (second_order and native_batch_norms(model))


def per_task_only(model: nn.Module) -> bool:
    """True if a module of ``model`` is marked ``per_task_only = True`` (control flow on the
    data, which ``vmap`` cannot trace)."""
    return any(getattr(m, "per_task_only", False) for m in model.modules())
