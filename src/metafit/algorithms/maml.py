"""MAML (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep
Networks"), its first-order variant FOMAML (same paper, sec. 5.2), and MAML++'s per-layer
per-step learned inner rates (LSLR; Antoniou et al. 2019, "How to train your MAML").

Per task: ``theta' = inner_loop(theta, support)``; outer loss = loss(theta', query);
meta-gradient = d(mean over tasks of the outer loss)/d theta, through the inner loop
(second order) or through its identity path only (first order).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from metafit import functional as mf
from metafit.algorithms.base import Algorithm
from metafit.algorithms.registry import register_algorithm
from metafit.episodes import Episodes
from metafit.execution.plan import check_batching
from metafit.execution.program import BatchForm
from metafit.execution.settings import Batching, Execution
from metafit.functional import Params
from metafit.models.blocks import once_differentiable_region

__all__ = ["FOMAML", "MAML", "param_key"]


def param_key(name: str) -> str:
    """A parameter name usable as a ``ParameterDict`` key (no dots):
    ``"body.0.0.weight"`` -> ``"body__0__0__weight"``."""
    return name.replace(".", "__")


@register_algorithm("maml")
class MAML(Algorithm):
    """Model-Agnostic Meta-Learning.

    Args:
        model: a ``FewShotModel``; every trainable parameter is adapted in the inner loop.
        inner_lr: inner-loop step size alpha (0.4 for Omniglot, Finn et al. 2017).
        inner_steps: inner steps during meta-training.
        first_order: FOMAML: drop second derivatives.
        eval_inner_steps: default steps of :meth:`adapt` (``None``: ``inner_steps``).
        lslr: MAML++ learned per-layer per-step rates: a ``ParameterDict`` ``lslr`` of
            ``[inner_steps]`` vectors initialised to ``inner_lr``, meta-learned with the
            model (steps past ``inner_steps`` at evaluation reuse the last rate).
        batching: shorthand for ``execution``'s ``batching``: ``"loop"`` (one task after
            another), ``"vmap"`` (all tasks at once, ``functional.batched_query_losses``)
            or ``"auto"`` (:func:`metafit.execution.plan.runs_batched`). Both give the same
            meta-gradients (tested).
        execution: how meta-batches run (:class:`~metafit.execution.Execution`).
    """

    graphable = True
    batch_form: ClassVar[BatchForm | None] = "vmap"
    batch_on_cpu = True

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        lslr: bool = False,
        batching: Batching = "auto",
        execution: Execution | None = None,
    ) -> None:
        execution = Execution() if execution is None else execution
        if batching != "auto":
            execution = replace(execution, batching=batching)
        super().__init__(model, inner_steps, eval_inner_steps, execution)
        self.inner_lr = float(inner_lr)
        self.first_order = bool(first_order)
        check_batching(self, self.execution)
        self.lslr: nn.ParameterDict | None = None
        if lslr:
            if inner_steps < 1:
                raise ValueError("lslr=True needs inner_steps >= 1")
            params = dict(self.model.named_parameters())
            self.lslr = nn.ParameterDict(
                {
                    param_key(n): nn.Parameter(
                        torch.full((inner_steps,), self.inner_lr, dtype=params[n].dtype)
                    )
                    for n in self.adapted_names()
                }
            )

    # -- what the inner loop touches (overridden by ANIL / Meta-SGD) ----------------------
    def adapted_names(self) -> list[str]:
        """Names (relative to ``self.model``) of the parameters the inner loop adapts."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def inner_rates(self) -> dict[str, Any]:
        """Keyword arguments ``lr``, ``lr_per_param``, ``lslr`` of
        :func:`metafit.functional.inner_loop`, keyed like ``self.model``'s parameters."""
        lslr = None
        if self.lslr is not None:
            lslr = {n: self.lslr[param_key(n)] for n in self.adapted_names()}
        return {"lr": self.inner_lr, "lr_per_param": None, "lslr": lslr}

    # -- meta-training -------------------------------------------------------------------
    @property
    def second_order(self) -> bool:
        """Second order unless ``first_order``."""
        return not self.first_order

    def batch_loss(self, episodes: Episodes, chunk_size: int | None
                   ) -> tuple[Tensor, Tensor]:
        """Mean query loss after adaptation over the T tasks at once (``vmap``) and the
        scores ``[T]``; the same values as the per-task :meth:`task_loss` (tested)."""
        losses, outs = mf.batched_query_losses(
            self.model, dict(self.model.named_parameters()), episodes.support_x,
            episodes.support_y, episodes.query_x, episodes.query_y, self.inner_steps,
            first_order=self.first_order, adapt_names=self.adapted_names(),
            chunk_size=chunk_size, **self.inner_rates(),
        )  # [T], [T, N*Q, out]
        scores = torch.stack([mf.score(o.detach(), y) for o, y in zip(outs, episodes.query_y,
                                                                       strict=True)])  # [T]
        return losses.mean(), scores  # [], [T]

    def task_loss(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Adapt on ``support_x [N*K, *x]`` (graph kept), score on ``query_x [N*Q, *x]``.

        The query pass is differentiated once (the second derivatives come from the support
        pass), so it runs in a :func:`~metafit.models.blocks.once_differentiable_region`.
        """
        theta = dict(self.model.named_parameters())
        adapted = mf.inner_loop(
            self.model, theta, support_x, support_y, self.inner_steps,
            first_order=self.first_order, adapt_names=self.adapted_names(),
            **self.inner_rates(),
        )
        with once_differentiable_region():
            out = mf.forward(self.model, adapted, query_x)  # [N*Q, out]
        return mf.loss_fn(out, query_y), out

    # -- adaptation ----------------------------------------------------------------------
    def trajectory(
        self, support_x: Tensor, support_y: Tensor, steps: int, query_x: Tensor | None = None
    ) -> Iterator[tuple[Params, Tensor | None]]:
        """Full-batch gradient descent on the support set with the (learned) inner rates."""
        yield from mf.adaptation_trajectory(
            self.model, dict(self.model.named_parameters()), support_x, support_y, steps,
            adapt_names=self.adapted_names(), query_x=query_x, **self.inner_rates(),
        )


@register_algorithm("fomaml")
class FOMAML(MAML):
    """First-order MAML: :class:`MAML` with ``first_order=True`` (Finn et al. 2017)."""

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        eval_inner_steps: int | None = None,
        lslr: bool = False,
        batching: Batching = "auto",
        execution: Execution | None = None,
    ) -> None:
        super().__init__(model, inner_lr, inner_steps, True, eval_inner_steps, lslr, batching,
                         execution)
