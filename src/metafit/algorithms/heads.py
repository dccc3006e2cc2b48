"""A logistic-regression head fitted to convergence on normalised features.

Tian et al. 2020 ("Rethinking Few-Shot Image Classification: a Good Embedding Is All You
Need?", sec. 3) classify a new task with a multinomial logistic regression on the
L2-normalised embeddings of its support set, fitted to convergence with an L2 penalty.
On a meta-trained embedding this head can beat the algorithm's own classifier (measured
on BANKING77 in benchmarks/RESULTS.md). ProtoNet, FineTune and the linear probe take it with
``classifier="logistic"`` (recipe field ``classifier``).

The objective, for support features ``f_i [F]`` with labels ``y_i``::

    mean_i CE(W f_i / ||f_i|| + b, y_i) + penalty * ||W||^2

is convex; L-BFGS with a strong-Wolfe line search solves it from zero in a few dozen
iterations for a few hundred examples.

When the classes of the support set have different numbers of examples (a model updated
with one example of a new class beside five of each old one), the mean is *class
balanced*: example ``i`` weighs ``1 / n_{y_i}``, so every class counts as much in the
objective (King & Zeng 2001's prior correction; scikit-learn's ``class_weight=
"balanced"``). Without it the bias learns the class frequencies of the support set, and
a class added with one example is rarely predicted (measured: benchmarks/RESULTS.md,
"Continual updates"). A balanced support set gets the plain mean, unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.config.schema import CLASSIFIERS

__all__ = ["CLASSIFIERS", "LogisticHead", "check_classifier", "fit_logistic_head",
           "logistic_logits", "logistic_trajectory"]



def check_classifier(classifier: str | None, penalty: float, owner: str) -> None:
    """Raise ``ValueError`` for a test-time classifier or penalty ``owner`` cannot use."""
    if classifier is not None and classifier not in CLASSIFIERS:
        raise ValueError(f"{owner}: unknown classifier {classifier!r}; supported: "
                         f"{', '.join(CLASSIFIERS)} (or none: the algorithm's own)")
    if not penalty >= 0:
        raise ValueError(f"{owner}: the classifier penalty must be >= 0, got {penalty}")


def logistic_logits(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``W f / ||f|| + b``: ``features [B, F]``, ``weight [N, F]``, ``bias [N]`` ->
    ``[B, N]``."""
    return F.linear(F.normalize(features, dim=-1), weight, bias)  # [B, N]


def fit_logistic_head(features: Tensor, labels: Tensor, ways: int, penalty: float = 1e-4,
                      max_iter: int = 300) -> tuple[Tensor, Tensor]:
    """``(weight [ways, F], bias [ways])`` minimising the module docstring's objective on
    ``features [B, F]`` and ``labels [B]`` (in ``[0, ways)``), by L-BFGS from zero (at
    most ``max_iter`` iterations). Detached; deterministic.

    Raises:
        ValueError: shapes that do not match, labels outside ``[0, ways)``, a negative
            penalty, or non-finite features.
    """
    if features.dim() != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"fit_logistic_head: features must be [B, F] and labels [B], got "
                         f"{tuple(features.shape)} and {tuple(labels.shape)}")
    if penalty < 0:
        raise ValueError(f"fit_logistic_head: penalty must be >= 0, got {penalty}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= ways):
        raise ValueError(f"fit_logistic_head: labels must lie in [0, {ways}), got "
                         f"{int(labels.min())}..{int(labels.max())}")
    if not torch.isfinite(features).all():
        raise ValueError("fit_logistic_head: the features contain NaN or infinity")
    z = F.normalize(features.detach(), dim=-1)  # [B, F]
    weight = torch.zeros(ways, z.shape[1], dtype=z.dtype, device=z.device,
                         requires_grad=True)  # [N, F]
    bias = torch.zeros(ways, dtype=z.dtype, device=z.device, requires_grad=True)  # [N]
    solver = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter,
                               line_search_fn="strong_wolfe")

    counts = torch.bincount(labels, minlength=ways)  # [N]
    present = counts[counts > 0]
    balance = None  # equal classes: the plain mean
    if len(present) and int(present.min()) != int(present.max()):
        balance = torch.where(counts > 0, 1.0 / counts.clamp(min=1), 0.0).to(z.dtype)  # [N]
        # cross_entropy's weighted mean divides by the sum of the examples' weights:
        # sum_i l_i / n_{y_i} / (number of present classes)

    def closure() -> Tensor:
        solver.zero_grad()
        fit = F.cross_entropy(F.linear(z, weight, bias), labels, weight=balance)
        loss = fit + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        solver.step(closure)
    return weight.detach(), bias.detach()


class LogisticHead(nn.Module):
    """Head of a model adapted with ``classifier="logistic"``: features ``[B, F]`` ->
    logits ``[B, N]`` by :func:`logistic_logits` (a linear layer on the L2-normalised
    features). Not an ``nn.Linear`` subclass, so dynamic quantization leaves it (and its
    normalisation) alone."""

    def __init__(self, in_features: int, out_features: int,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device))

    def forward(self, features: Tensor) -> Tensor:
        return logistic_logits(features, self.weight, self.bias)  # [B, N]


def logistic_trajectory(body: nn.Module, support_x: Tensor, support_y: Tensor, steps: int,
                        query_x: Tensor | None, penalty: float
                        ) -> Iterator[tuple[dict[str, Tensor], Tensor | None]]:
    """An algorithm's ``trajectory`` with the logistic head: ``body``'s features of the
    support set ``[N*K, F]`` (flattened), the head fitted once, and ``steps + 1`` times the
    same ``(params, query logits [N*Q, N] or None)``; ``params``: the body's (``body.*``)
    and ``head.weight [N, F]``, ``head.bias [N]``."""
    with torch.no_grad():
        f_support = body(support_x).flatten(1)  # [N*K, F]
        f_query = None if query_x is None else body(query_x).flatten(1)  # [N*Q, F]
    weight, bias = fit_logistic_head(f_support, support_y, int(support_y.max()) + 1, penalty)
    out = None if f_query is None else logistic_logits(f_query, weight, bias)  # [N*Q, N]
    params = {**{"body." + n: p.detach() for n, p in body.named_parameters()},
              "head.weight": weight, "head.bias": bias}
    for _ in range(steps + 1):
        yield params, out
