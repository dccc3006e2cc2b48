"""The per-task inner loop: gradient descent over a parameter dict with
``torch.autograd`` (graph kept for second order, or detached). See :mod:`metafit.functional`."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metafit.models.blocks import once_differentiable_region

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


def _detached(rates: Mapping[str, Tensor] | None) -> dict[str, Tensor] | None:
    return None if rates is None else {n: r.detach() for n, r in rates.items()}


@dataclass(frozen=True)
class Rates:
    """The inner learning rates of a loop: the scalar ``lr``, Meta-SGD's per-parameter
    tensors ``per_param`` and MAML++'s per-step vectors ``per_step`` (:func:`step_rate`)."""

    lr: float | Tensor
    per_param: Mapping[str, Tensor] | None = None
    per_step: Mapping[str, Tensor] | None = None

    def at(self, name: str, step: int) -> float | Tensor:
        """The rate of parameter ``name`` at inner step ``step``."""
        return step_rate(name, step, self.lr, self.per_param, self.per_step)

    def detached(self) -> Rates:
        """The same rates without their graph (graph-free adaptation)."""
        lr = self.lr.detach() if isinstance(self.lr, Tensor) else self.lr
        return Rates(lr, _detached(self.per_param), _detached(self.per_step))


def sgd_update(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], step: int,
               rates: Rates) -> Params:
    """The inner update rule, shared by every inner loop: ``theta[n] - rate(n, step) *
    grads[n]`` for each name in ``grads``; the other entries of ``params`` pass through.
    A new dict, in ``params``' order."""
    new = dict(params)
    for n, g in grads.items():
        new[n] = params[n] - rates.at(n, step) * g  # [*param]
    return new


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
        return sgd_update(current, dict(zip(names, grads, strict=True)), step,
                          Rates(lr, lr_per_param, lslr))


def descent(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor,
            steps: int, rates: Rates, *, first_order: bool = False,
            adapt_names: Iterable[str] | None = None, batch_size: int | None = None,
            detach: bool = False) -> Iterator[Params]:
    """The per-task inner loop: the parameters after 0..``steps`` calls of
    :func:`inner_step` on ``x [B, *x]``, ``y [B]`` (``steps + 1`` items, lazily).

    ``detach``: every item (and the start) is detached, so no outer graph grows (the
    graph-free adaptation of :func:`adaptation_trajectory`); otherwise the items keep the
    graph back to ``params`` (:func:`inner_loop`). ``batch_size``: the examples of step s
    are :func:`minibatch` ``(x, y, s, batch_size)``.
    """
    names = None if adapt_names is None else list(adapt_names)
    current: Params = {n: p.detach() for n, p in params.items()} if detach else dict(params)
    for s in range(steps + 1):
        yield current
        if s == steps:
            return
        xb, yb = minibatch(x, y, s, batch_size)  # [b, *x], [b]
        current = inner_step(
            model, current, xb, yb, rates.lr, step=s, first_order=first_order,
            lr_per_param=rates.per_param, lslr=rates.per_step, adapt_names=names,
        )
        if detach:
            current = {n: p.detach() for n, p in current.items()}


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
    """The last item of :func:`descent`: ``steps`` calls of :func:`inner_step` on the full
    support set ``x [B, *x]``, ``y [B]``.

    With ``params`` the module's live parameters and ``first_order=False`` the result keeps
    the whole graph back to them (MAML); with ``first_order=True`` only the identity path
    (FOMAML). ``steps=0`` returns ``params`` unchanged (as a new dict).
    """
    return deque(descent(model, params, x, y, steps, Rates(lr, lr_per_param, lslr),
                         first_order=first_order, adapt_names=adapt_names), maxlen=1)[0]


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

    Used at evaluation (``adapt``, adaptation curves) and by Reptile: :func:`descent` with
    first-order steps whose results are detached, so no outer graph grows.

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
    rates = Rates(lr, lr_per_param, lslr).detached()
    for current in descent(model, params, x, y, steps, rates, first_order=True,
                           adapt_names=adapt_names, batch_size=batch_size, detach=True):
        out = None
        if query_x is not None:
            with torch.no_grad(), once_differentiable_region():
                out = forward(model, current, query_x)  # [Bq, out]
        yield current, out


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
