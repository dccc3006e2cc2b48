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
(:func:`false_accepts_at_recall`, "FPR at 95% TPR"); all of a labelled test set's, with
Wilson intervals, in :class:`OpenSetReport` (:func:`score_open_set`, ``metafit evaluate
MODEL --test T`` of a model with a reject setting).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from metafit.evaluation.classification import wilson_interval

__all__ = ["RejectScore", "REJECT_SCORES", "FEATURE_SCORES", "reject_scores",
           "score_references", "threshold_for_recall", "false_accepts_at_recall", "auroc",
           "OpenSetReport", "score_open_set"]

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
    references = score_references(method, support_features, support_labels)  # [R, F]
    return (_unit(features) @ references.T).amax(dim=-1)


def score_references(method: str, support_features: Tensor,
                     support_labels: Tensor | None = None) -> Tensor:
    """The unit vectors ``[R, F]`` a feature score compares an input with (its score is
    the largest cosine similarity to them): the support examples' ``[S, F]``
    (``nearest``), or the class means of the unit support features ``[N, F]``
    (``prototype``; needs ``support_labels [S]``). A deployed model computes them once.

    Raises:
        ValueError: ``method`` is not a feature score, or ``prototype`` without labels.
    """
    if method not in FEATURE_SCORES:
        raise ValueError(f"{method!r} is not a feature score ({', '.join(sorted(FEATURE_SCORES))})")
    s = _unit(support_features)  # [S, F]
    if method == "nearest":
        return s
    if support_labels is None:
        raise ValueError("the 'prototype' reject score needs the support labels")
    labels = support_labels.long()
    n = int(labels.max()) + 1
    sums = torch.zeros(n, s.shape[1], dtype=s.dtype).index_add_(0, labels, s)
    counts = torch.bincount(labels, minlength=n).clamp(min=1).to(s.dtype)
    return _unit(sums / counts[:, None])  # [N, F]


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


@dataclass
class OpenSetReport:
    """Open-set figures of a labelled test set with ``in_scope`` rows of known classes and
    ``out_of_scope`` rows of other labels (:func:`score_open_set`). Each rate comes with
    Wilson's 95% interval (``_low``, ``_high``) over its rows; the ``*_at_threshold``
    figures are None when the model has no threshold. The interval of
    ``false_accepts`` treats the threshold set on the test set's own in-scope scores as
    fixed."""

    score: str
    in_scope: int
    out_of_scope: int
    threshold: float | None
    #: in-scope rows accepted (``score >= threshold``)
    in_scope_recall: float | None
    in_scope_recall_low: float | None
    in_scope_recall_high: float | None
    #: in-scope rows accepted with their true label
    accepted_accuracy: float | None
    accepted_accuracy_low: float | None
    accepted_accuracy_high: float | None
    #: out-of-scope rows rejected
    out_of_scope_recall: float | None
    out_of_scope_recall_low: float | None
    out_of_scope_recall_high: float | None
    auroc: float
    #: out-of-scope rows accepted at the threshold keeping ``recall`` of the in-scope ones
    recall: float
    false_accepts: float
    false_accepts_low: float
    false_accepts_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """``"none of these (max_prob): out-of-scope recall 71.0% (...) at the stored
        threshold, in-scope recall 94.1%, accuracy of the answers ... 88.2%, AUROC 0.873,
        false accepts 38.0% at 95% in-scope recall (120 in-scope, 40 out-of-scope)"``."""
        counts = f"({self.in_scope} in-scope, {self.out_of_scope} out-of-scope)"
        fa = (f"AUROC {self.auroc:.3f}, false accepts {100 * self.false_accepts:.1f}% "
              f"(95% CI {100 * self.false_accepts_low:.1f}-{100 * self.false_accepts_high:.1f})"
              f" at {100 * self.recall:g}% in-scope recall")
        if self.out_of_scope_recall is None or self.in_scope_recall is None:
            return f"none of these ({self.score}, no threshold): {fa} {counts}"
        accepted = ("" if self.accepted_accuracy is None else
                    f", accuracy of the answers on in-scope rows (a rejected one counts as "
                    f"wrong, as predict answers) {100 * self.accepted_accuracy:.1f}%")
        return (f"none of these ({self.score}): out-of-scope recall "
                f"{100 * self.out_of_scope_recall:.1f}% (95% CI "
                f"{100 * (self.out_of_scope_recall_low or 0):.1f}-"
                f"{100 * (self.out_of_scope_recall_high or 0):.1f}) and in-scope recall "
                f"{100 * self.in_scope_recall:.1f}% at the stored threshold{accepted}; {fa} "
                f"{counts}")


def _rate(hits: int, total: int) -> tuple[float, float, float]:
    """``hits / total`` and its Wilson 95% interval."""
    low, high = wilson_interval(hits, total)
    return hits / total, low, high


def score_open_set(score: str, in_scores: Tensor, out_scores: Tensor, in_correct: Tensor,
                   threshold: float | None, recall: float = 0.95) -> OpenSetReport:
    """The open-set figures of in-scope scores ``[P]`` (their predicted labels right or not:
    ``in_correct [P]`` bool) and out-of-scope scores ``[Q]`` at the model's ``threshold``
    (None: none stored) and at the threshold keeping ``recall`` of the in-scope scores.

    Raises:
        ValueError: no in-scope or no out-of-scope scores.
    """
    p, q = in_scores.double().flatten(), out_scores.double().flatten()
    if p.numel() == 0 or q.numel() == 0:
        raise ValueError("open-set scoring needs in-scope and out-of-scope rows")
    names = ("in_scope_recall", "accepted_accuracy", "out_of_scope_recall")
    fixed: dict[str, float | None] = {f"{n}{end}": None for n in names
                                      for end in ("", "_low", "_high")}
    if threshold is not None:
        accepted = p >= threshold  # [P]
        counts = ((int(accepted.sum()), len(p)),
                  (int((accepted & in_correct.bool()).sum()), len(p)),
                  (int((q < threshold).sum()), len(q)))
        for name, (hits, total) in zip(names, counts, strict=True):
            rate, low, high = _rate(hits, total)
            fixed.update({name: rate, f"{name}_low": low, f"{name}_high": high})
    accepts = round(false_accepts_at_recall(p, q, recall) * len(q))
    fa, fa_low, fa_high = _rate(accepts, len(q))
    return OpenSetReport(score=score, in_scope=len(p), out_of_scope=len(q),
                         threshold=threshold, auroc=auroc(p, q), recall=recall,
                         false_accepts=fa, false_accepts_low=fa_low,
                         false_accepts_high=fa_high, **fixed)
