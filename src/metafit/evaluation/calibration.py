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
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["MAX_TEMPERATURE", "MIN_TEMPERATURE", "fit_temperature", "nll", "support_folds"]

#: The temperatures :func:`fit_temperature` searches (and a stored one must lie in).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0


def nll(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels [M]`` under ``softmax(logits [M, N] / T)``."""
    scaled = logits.double() / temperature
    return float(torch.nn.functional.cross_entropy(scaled, labels.long()))


def fit_temperature(logits: Tensor, labels: Tensor, iterations: int = 80) -> float:
    """The ``T`` in [:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`] minimising
    :func:`nll` of ``logits [M, N]`` (held-out predictions) against ``labels [M]``.

    The NLL is convex in ``1 / T`` (a log-sum-exp minus a linear term), so a golden-section
    search over ``log T`` (unimodal there too) finds the minimum to ~1e-12 relative width
    in 80 iterations; no gradient or learning rate to tune.

    Raises:
        ValueError: no examples, or shapes that disagree.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise ValueError(f"need logits [M, N] and labels [M], M >= 1; got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
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
