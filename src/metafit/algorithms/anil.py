"""ANIL, "Almost No Inner Loop" (Raghu et al. 2020, "Rapid Learning or Feature Reuse?
Towards Understanding the Effectiveness of MAML"): MAML whose inner loop adapts only the
head; the body is meta-learned by the outer loop alone.

Fast path: the body runs once per task on the support and once on the query set; the inner
loop is a functional loop over the head's parameters on those features. The graph back to
the body is kept, so the body receives outer gradients (through the features, and, second
order, through the head's inner gradients).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from metafit import functional as mf
from metafit.algorithms.maml import MAML
from metafit.algorithms.registry import register_algorithm
from metafit.execution.settings import Batching, Execution
from metafit.functional import Params
from metafit.models.blocks import once_differentiable_region

__all__ = ["ANIL"]

_HEAD = "head."


def _strip_head(rates: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
    """Re-key ``{"head.weight": r}`` as ``{"weight": r}`` (names relative to the head)."""
    return None if rates is None else {n[len(_HEAD):]: r for n, r in rates.items()}


@register_algorithm("anil")
class ANIL(MAML):
    """ANIL: :class:`MAML` with an inner loop over ``model.head`` only.

    Args:
        model: a ``FewShotModel`` with a parametrised ``head``.
        inner_lr, inner_steps, first_order, eval_inner_steps, lslr, batching, execution:
            as in :class:`MAML` (the ``lslr`` rates exist for the head's parameters only).
    """

    cheap_query_scores = True  # query features are computed once per task

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
        super().__init__(model, inner_lr, inner_steps, first_order, eval_inner_steps, lslr,
                         batching, execution)
        if not self.adapted_names():
            raise ValueError("ANIL needs a model whose head has trainable parameters")

    def adapted_names(self) -> list[str]:
        """``head.*`` parameters (names relative to ``self.model``)."""
        return [n for n in super().adapted_names() if n.startswith(_HEAD)]

    def head_rates(self) -> dict[str, Any]:
        """:meth:`inner_rates` re-keyed relative to ``self.model.head``."""
        rates = self.inner_rates()
        return {
            "lr": rates["lr"],
            "lr_per_param": _strip_head(rates["lr_per_param"]),
            "lslr": _strip_head(rates["lslr"]),
        }

    def head_params(self) -> Params:
        """The head's live parameters, keyed relative to the head (``"weight"``...)."""
        adapted = set(self.adapted_names())
        return {n[len(_HEAD):]: p for n, p in self.model.named_parameters() if n in adapted}

    def task_loss(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Body features once per set, inner loop on the head, query loss (graph kept)."""
        body, head = self.model.body, self.model.head
        with once_differentiable_region():  # the body is differentiated once, even 2nd order
            f_support = body(support_x)  # [N*K, F]
            f_query = body(query_x)  # [N*Q, F]
        adapted = mf.inner_loop(
            head, self.head_params(), f_support, support_y, self.inner_steps,
            first_order=self.first_order, **self.head_rates(),
        )
        out = mf.forward(head, adapted, f_query)  # [N*Q, out]
        return mf.loss_fn(out, query_y), out

    def trajectory(
        self, support_x: Tensor, support_y: Tensor, steps: int, query_x: Tensor | None = None
    ) -> Iterator[tuple[Params, Tensor | None]]:
        """Head-only gradient descent on frozen body features; yields full model params."""
        body = self.model.body
        with torch.no_grad():
            f_support = body(support_x)  # [N*K, F]
            f_query = None if query_x is None else body(query_x)  # [N*Q, F]
        frozen = {n: p.detach() for n, p in self.model.named_parameters()}
        for head, out in mf.adaptation_trajectory(
            self.model.head, self.head_params(), f_support, support_y, steps,
            query_x=f_query, **self.head_rates(),
        ):
            yield {**frozen, **{_HEAD + n: p for n, p in head.items()}}, out
