"""Open-set ("none of these") scores and metrics.

A classifier adapted to N classes always answers one of them. To say "none of these", a
*reject score* ``s(x)`` (higher = more like the known classes) is compared with a
threshold ``t``: inputs with ``s(x) < t`` get the unknown label. This module holds the
scores, the threshold set by a target in-scope recall, and the open-set metrics of the
evaluation protocols (benchmarks/openset.py, RESULTS.md "None of these"):

Scores (:func:`reject_scores`; ``logits [M, N]``, ``features [M, F]`` of the inputs,
``support_features [S, F]`` / ``support_labels [S]`` of the support set):

* ``max_prob``: the largest calibrated probability ``max softmax(logits / T)``, the
  baseline of Hendrycks & Gimpel 2017 ("A Baseline for Detecting Misclassified and
  Out-of-Distribution Examples").
* ``max_logit``: the largest logit (Hendrycks et al. 2022, "Scaling Out-of-Distribution
  Detection for Real-World Settings"); for a cosine ProtoNet it is the scaled cosine
  similarity to the nearest prototype.
* ``energy``: ``T * logsumexp(logits / T)`` (Liu et al. 2020, "Energy-based
  Out-of-distribution Detection"), the negative free energy.
* ``prototype``: the cosine similarity of the input's features to the nearest class mean
  of the support features (whatever the head).
* ``nearest``: the cosine similarity to the nearest single support example (the 1-NN
  distance score of Sun et al. 2022, "Out-of-Distribution Detection with Deep Nearest
  Neighbors", with k = 1 since a few-shot class has few neighbours).

Metrics of in-scope scores ``[P]`` against out-of-scope scores ``[Q]``: AUROC
(:func:`auroc`) and the false-accept rate at a target in-scope recall
(:func:`false_accepts_at_recall`, "FPR at 95% TPR").
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch
from torch import Tensor

__all__ = ["RejectScore", "REJECT_SCORES", "FEATURE_SCORES", "reject_scores",
           "threshold_for_recall", "false_accepts_at_recall", "auroc"]

RejectScore = Literal["max_prob", "max_logit", "energy", "prototype", "nearest"]
#: Every reject score, in the order of the docs.
REJECT_SCORES: tuple[str, ...] = get_args(RejectScore)
#: The scores that need the inputs' and the support set's features, not only logits.
FEATURE_SCORES = frozenset({"prototype", "nearest"})


def _unit(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def reject_scores(method: str, logits: Tensor, temperature: float = 1.0,
                  features: Tensor | None = None, support_features: Tensor | None = None,
                  support_labels: Tensor | None = None) -> Tensor:
    """The reject score ``[M]`` of each of M inputs (higher = more in-scope).

    Args:
        method: one of :data:`REJECT_SCORES`.
        logits: ``[M, N]`` the classifier's logits.
        temperature: the calibration temperature ``T`` (``max_prob``, ``energy``).
        features: ``[M, F]`` the inputs' features (``prototype``, ``nearest``).
        support_features: ``[S, F]`` the support set's features (same scores).
        support_labels: ``[S]`` in ``0..N-1`` (``prototype``).

    Raises:
        ValueError: an unknown method, or a feature score without features.
    """
    if method not in REJECT_SCORES:
        raise ValueError(f"unknown reject score {method!r}; choose one of "
                         f"{', '.join(REJECT_SCORES)}")
    if method == "max_prob":
        return torch.softmax(logits.float() / temperature, dim=-1).amax(dim=-1)
    if method == "max_logit":
        return logits.float().amax(dim=-1)
    if method == "energy":
        return temperature * torch.logsumexp(logits.float() / temperature, dim=-1)
    if features is None or support_features is None:
        raise ValueError(f"the {method!r} reject score needs the features of the inputs "
                         "and of the support set")
    f, s = _unit(features), _unit(support_features)  # [M, F], [S, F]
    if method == "nearest":
        return (f @ s.T).amax(dim=-1)
    if support_labels is None:
        raise ValueError("the 'prototype' reject score needs the support labels")
    labels = support_labels.long()
    n = int(labels.max()) + 1
    sums = torch.zeros(n, s.shape[1], dtype=s.dtype).index_add_(0, labels, s)
    counts = torch.bincount(labels, minlength=n).clamp(min=1).to(s.dtype)
    prototypes = _unit(sums / counts[:, None])  # [N, F]
    return (f @ prototypes.T).amax(dim=-1)


def threshold_for_recall(in_scores: Tensor, recall: float) -> float:
    """The largest threshold ``t`` that accepts (``score >= t``) at least ``recall`` of
    the in-scope scores ``[P]``.

    Raises:
        ValueError: no scores, or ``recall`` outside (0, 1].
    """
    if not 0.0 < recall <= 1.0:
        raise ValueError(f"recall must be in (0, 1], got {recall}")
    if in_scores.numel() == 0:
        raise ValueError("no in-scope scores to set a threshold on")
    ordered = in_scores.double().flatten().sort().values
    rejected = math.floor((1.0 - recall) * len(ordered) + 1e-9)  # at most this many below
    return float(ordered[min(rejected, len(ordered) - 1)])


def false_accepts_at_recall(in_scores: Tensor, out_scores: Tensor,
                            recall: float = 0.95) -> float:
    """The fraction of out-of-scope scores ``[Q]`` accepted at the threshold that keeps
    ``recall`` of the in-scope scores ``[P]`` (:func:`threshold_for_recall`)."""
    if out_scores.numel() == 0:
        raise ValueError("no out-of-scope scores")
    t = threshold_for_recall(in_scores, recall)
    return float((out_scores.double() >= t).double().mean())


def auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """Area under the ROC curve of telling in-scope ``[P]`` (positive) from out-of-scope
    ``[Q]`` scores: the probability that a random in-scope score exceeds a random
    out-of-scope one, ties counting one half (Mann-Whitney U / (P Q))."""
    p, q = in_scores.double().flatten(), out_scores.double().flatten()
    if p.numel() == 0 or q.numel() == 0:
        raise ValueError("AUROC needs in-scope and out-of-scope scores")
    both = torch.cat([p, q])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=both.dtype)
    # average ranks over ties
    values, inverse = torch.unique(both, return_inverse=True)
    sums = torch.zeros(len(values), dtype=both.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(values), dtype=both.dtype).index_add_(
        0, inverse, torch.ones_like(both))
    ranks = (sums / counts)[inverse]
    u = float(ranks[: len(p)].sum()) - len(p) * (len(p) + 1) / 2
    return u / (len(p) * len(q))
