"""Meta-SGD (Li et al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning"):
MAML whose inner step uses a learned learning rate per parameter entry,
``theta' = theta - lr (*) grad`` with ``lr`` the same shape as ``theta``, meta-learned with
``theta``. It is :class:`~metafit.algorithms.maml.MAML` with different inner rates, nothing
else.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metafit.algorithms.maml import MAML, param_key
from metafit.algorithms.registry import register_algorithm
from metafit.execution.settings import Batching, Execution

__all__ = ["MetaSGD"]


@register_algorithm("metasgd")
class MetaSGD(MAML):
    """Meta-SGD.

    Args:
        model: a ``FewShotModel``.
        inner_lr: initial value of every learned rate (the paper samples them uniformly in
            [0.005, 0.1]; a constant start makes step 0 identical to MAML).
        inner_steps: inner steps (the paper uses 1; later steps reuse the same rates).
        first_order: drop second derivatives (the rates still get gradients, through
            ``lr * grad``).
        eval_inner_steps: default steps of ``adapt``.
        batching, execution: as in :class:`~metafit.algorithms.maml.MAML`.

    The rates are the ``ParameterDict`` ``lr``: ``named_parameters()`` lists them as
    ``"lr.body__0__0__weight"`` etc. (dots of the model's names replaced by ``__``).
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.4,
        inner_steps: int = 1,
        first_order: bool = False,
        eval_inner_steps: int | None = None,
        batching: Batching = "auto",
        execution: Execution | None = None,
    ) -> None:
        super().__init__(model, inner_lr, inner_steps, first_order, eval_inner_steps,
                         batching=batching, execution=execution)
        params = dict(self.model.named_parameters())
        self.lr = nn.ParameterDict(
            {
                param_key(n): nn.Parameter(torch.full_like(params[n].detach(), self.inner_lr))
                for n in self.adapted_names()
            }
        )

    def inner_rates(self) -> dict[str, Any]:
        """The learned per-parameter rates, keyed like ``self.model``'s parameters."""
        per_param = {n: self.lr[param_key(n)] for n in self.adapted_names()}
        return {"lr": self.inner_lr, "lr_per_param": per_param, "lslr": None}
