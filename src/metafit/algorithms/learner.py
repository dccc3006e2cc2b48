"""The adapted model every algorithm returns from ``adapt``: a plain callable."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from metafit import functional as mf
from metafit.functional import Params

__all__ = ["Learner"]


class Learner:
    """A model adapted to one task: a plain callable ``x [B, *x] -> [B, out]``.

    Holds ``module`` (used functionally, never modified) and ``params``: its own detached
    copies of the adapted tensors, keyed like ``module.named_parameters()`` (and buffers).
    ``copy=False`` keeps detached aliases instead: for a learner used at once and dropped
    (scoring an adaptation curve), which spares copying a large encoder per call.
    """

    def __init__(self, module: nn.Module, params: Mapping[str, Tensor], copy: bool = True
                 ) -> None:
        self.module = module
        self.params: Params = {n: p.detach().clone() if copy else p.detach()
                               for n, p in params.items()}

    def __call__(self, x: Tensor) -> Tensor:
        """Outputs ``[B, out]`` (logits or regression values) for inputs ``x [B, *x]``."""
        return mf.forward(self.module, self.params, x)  # [B, out]

    def state_dict(self) -> Params:
        """A copy of the adapted tensors (save with ``torch.save``)."""
        return {n: p.clone() for n, p in self.params.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Replace the adapted tensors by ``state`` (same keys and shapes)."""
        if set(state) != set(self.params):
            raise KeyError(
                f"Learner.load_state_dict: keys differ: missing "
                f"{sorted(set(self.params) - set(state))}, unexpected "
                f"{sorted(set(state) - set(self.params))}"
            )
        for n, p in state.items():
            if p.shape != self.params[n].shape:
                raise ValueError(
                    f"Learner.load_state_dict: {n} has shape {tuple(p.shape)}, "
                    f"expected {tuple(self.params[n].shape)}"
                )
        self.params = {n: p.detach().clone() for n, p in state.items()}

    def __repr__(self) -> str:
        return f"Learner({type(self.module).__name__}, {len(self.params)} tensors)"
