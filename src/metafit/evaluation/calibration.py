"""Temperature scaling fitted without extra data: on held-out predictions of the support
set itself (Guo et al. 2017, "On Calibration of Modern Neural Networks", sec. 4.2, with the
validation set replaced by cross-validation over the support examples).

A few-shot user has no validation set: every labelled example is in the support set. So
the support set is cut into folds (:func:`support_folds`), the model is adapted on all
but one fold and scores the held-out fold, and the temperature ``T`` minimising the
negative log-likelihood of those held-out logits (:func:`fit_temperature`) is applied to
the model adapted on the whole support set: probabilities ``softmax(logits / T)``.
Predicted labels never change (``T > 0`` keeps the order of the logits).

A class with one example cannot be held out (the model adapted without it would not know
the class), so its example always stays in; a support set with one example per class has
nothing to hold out and keeps ``T = 1``.

The fit is a MAP estimate, not maximum likelihood: a Gaussian prior on ``log T`` (mean 0,
standard deviation :data:`PRIOR_SCALE`) is added to the summed held-out NLL. A few-shot
support set is often classified perfectly in its held-out folds, and then the likelihood
keeps rising as ``T -> 0``: maximum likelihood ran to the search's bound ``T = 0.01`` in
3-81% of test episodes and made the model claim certainty it does not have (NLL of the
queries up 50-fold on Omniglot ProtoNet; RESULTS.md, "Calibration: ECE before and after
--calibrate"). The prior keeps such a fit near 1 and fades as held-out errors accumulate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MAX_TEMPERATURE", "MIN_TEMPERATURE", "PRIOR_SCALE", "fit_temperature", "nll",
           "support_folds"]

#: The temperatures :func:`fit_temperature` searches (and a stored one must lie in).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
#: Standard deviation of the Gaussian prior on ``log T`` of :func:`fit_temperature`
#: (chosen on the calibration benchmark, RESULTS.md).
PRIOR_SCALE = 0.5


def nll(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels [M]`` under ``softmax(logits [M, N] / T)``;
    ``labels [M, N]`` (probabilities: soft targets, e.g. a teacher's) give the mean cross
    entropy from them."""
    scaled = logits.double() / temperature
    target = labels.double() if labels.dim() == 2 else labels.long()
    return float(torch.nn.functional.cross_entropy(scaled, target))


def fit_temperature(logits: Tensor, labels: Tensor, iterations: int = 80,
                    prior_scale: float | None = PRIOR_SCALE) -> float:
    """The ``T`` in [:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`] minimising
    ``M * nll(logits, labels, T) + (log T)^2 / (2 prior_scale^2)`` for ``logits [M, N]``
    (held-out predictions) and ``labels [M]`` (or soft targets ``[M, N]``, see
    :func:`nll`): the MAP temperature under a Gaussian prior on ``log T`` (module
    docstring); ``prior_scale=None``: maximum likelihood.

    The objective is evaluated on a grid of 121 values of ``log T`` and the best grid
    cell's neighbourhood refined by a golden-section search (``iterations`` steps, to
    ~1e-12 relative width); no gradient or learning rate to tune.

    Raises:
        ValueError: no examples, shapes that disagree, or a ``prior_scale`` <= 0.
    """
    if logits.dim() != 2 or labels.shape not in (logits.shape[:1], logits.shape) or len(
            labels) == 0:
        raise ValueError(f"need logits [M, N] and labels [M] or [M, N], M >= 1; got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if prior_scale is not None and not prior_scale > 0:
        raise ValueError(f"prior_scale must be > 0 or None, got {prior_scale}")
    count = len(labels)

    def objective(u: float) -> float:
        value = count * nll(logits, labels, math.exp(u))
        return value if prior_scale is None else value + u * u / (2 * prior_scale ** 2)

    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    grid = [lo + (hi - lo) * i / 120 for i in range(121)]
    values = [objective(u) for u in grid]
    best = min(range(len(grid)), key=values.__getitem__)
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = objective(a), objective(b)
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = objective(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = objective(b)
    return math.exp((lo + hi) / 2)


def support_folds(labels: Tensor, folds: int = 10) -> list[Tensor]:
    """Held-out index sets ``[k_i]`` over a support set with ``labels [S]``: at most
    ``folds`` of them, every example of a class with two or more examples held out exactly
    once, and no fold holding out every example of a class (so the model adapted without
    a fold still knows every class). Examples of one-example classes are never held out.
    Deterministic: a class's examples go to folds in turn, in support order, the classes
    starting at staggered folds so that the folds stay balanced.
    """
    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    counts = torch.bincount(labels.long())
    largest = int(counts.max()) if len(counts) else 0
    k = min(folds, largest)
    if k < 2:
        return []
    assigned: list[list[int]] = [[] for _ in range(k)]
    seen = torch.zeros_like(counts)
    for i, label in enumerate(labels.long().tolist()):
        n = int(counts[label])
        if n >= 2:
            # j-th example of its class: fold (j + label) % k; with n >= 2 examples spread
            # over k >= 2 folds, a fold holds at most ceil(n / k) < n of them
            assigned[(int(seen[label]) + label) % k].append(i)
        seen[label] += 1
    return [torch.tensor(f, dtype=torch.long) for f in assigned if f]
