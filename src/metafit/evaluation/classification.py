"""Scoring a classifier's probabilities on a labelled test set: accuracy with its 95%
interval, macro-F1, per-class precision/recall/F1, the confusion matrix and its most
confused pairs, and calibration (expected calibration error, reliability bins).

Everything is computed from ``probs [M, N]`` (each row a distribution over the N classes)
and ``labels [M]`` (class indices), so any model that outputs probabilities can be scored
the same way: an adapted model directory, a run adapted on a support set, an ONNX export.

- The accuracy interval is Wilson's score interval (Wilson 1927), which stays inside [0, 1]
  and is honest for small test sets and accuracies near 0 or 1 where the normal
  approximation is not.
- Precision, recall and F1 follow the usual definitions; a class never predicted has
  precision 0 (and so F1 0 unless it also has no examples), as scikit-learn's
  ``zero_division=0``. Macro-F1 averages F1 over the classes that have test examples.
- Expected calibration error (Naeini et al. 2015; Guo et al. 2017, "On Calibration of
  Modern Neural Networks"): the top probabilities are cut into ``bins`` equal-width bins
  over [0, 1]; ECE is the example-weighted mean over bins of ``|accuracy - confidence|``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["ClassScore", "ReliabilityBin", "TestSetReport", "confusion_counts",
           "score_probabilities", "wilson_interval"]

#: The z of a two-sided 95% interval.
Z95 = 1.959963984540054


def wilson_interval(correct: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval ``(low, high)`` of a proportion ``correct / total``.

    Raises:
        ValueError: ``total`` < 1 or ``correct`` outside ``0..total``.
    """
    if total < 1 or not 0 <= correct <= total:
        raise ValueError(f"need 0 <= correct <= total and total >= 1, got {correct}/{total}")
    p = correct / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    low = 0.0 if correct == 0 else max(0.0, centre - half)  # exact at the ends (rounding)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def confusion_counts(true: Tensor, pred: Tensor, classes: int) -> Tensor:
    """``[classes, classes]`` counts (long): row = true class, column = predicted class."""
    return torch.bincount(true.long() * classes + pred.long(),
                          minlength=classes * classes).reshape(classes, classes)


@dataclass
class ClassScore:
    """One class's figures: ``support`` test examples, ``predicted`` times predicted."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int
    predicted: int


@dataclass
class ReliabilityBin:
    """Examples whose top probability fell in ``[low, high)`` (the last bin includes 1):
    their count, mean top probability (``confidence``) and accuracy."""

    low: float
    high: float
    count: int
    confidence: float | None
    accuracy: float | None


@dataclass
class TestSetReport:
    """The scores of one test set (module docstring). ``confusion[i][j]``: examples of
    class ``i`` predicted as ``j``; ``confused_pairs``: the largest off-diagonal cells,
    ``{"true", "predicted", "count"}``, most frequent first."""

    examples: int
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    macro_f1: float
    ece: float
    classes: list[str]
    per_class: list[ClassScore]
    confusion: list[list[int]]
    confused_pairs: list[dict[str, Any]]
    reliability: list[ReliabilityBin]
    extra: dict[str, Any] = field(default_factory=dict)
    #: out-of-scope rows scored by a reject setting
    #: (:meth:`metafit.evaluation.openset.OpenSetReport.to_dict`); the figures above
    #: then cover the in-scope rows only
    open_set: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """``"accuracy 91.20% (95% CI 88.1-93.7), macro-F1 0.905, ECE 0.041 (512 examples)"``."""
        return (f"accuracy {100 * self.accuracy:.2f}% (95% CI {100 * self.accuracy_low:.1f}-"
                f"{100 * self.accuracy_high:.1f}), macro-F1 {self.macro_f1:.3f}, ECE "
                f"{self.ece:.3f} ({self.examples} examples)")


def _per_class(matrix: Tensor, names: list[str]) -> list[ClassScore]:
    m = matrix.double()
    tp, support, predicted = m.diagonal(), m.sum(1), m.sum(0)  # [N] each
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, tp / support.clamp(min=1), 0.0)
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-300), 0.0)
    return [ClassScore(n, float(p), float(r), float(f), int(s), int(q))
            for n, p, r, f, s, q in zip(names, precision, recall, f1, support, predicted,
                                        strict=True)]


def _reliability(top: Tensor, correct: Tensor, bins: int) -> tuple[list[ReliabilityBin], float]:
    """The bins of the top probabilities ``top [M]`` and the ECE over them."""
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    index = torch.bucketize(top.double(), edges[1:-1], right=True)  # [M] in 0..bins-1
    out, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        if count == 0:
            out.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), 0, None, None))
            continue
        conf = float(top[mask].double().mean())
        acc = float(correct[mask].double().mean())
        ece += count / len(top) * abs(acc - conf)
        out.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), count, conf, acc))
    return out, ece


def score_probabilities(probs: Tensor, labels: Tensor, class_names: list[str],
                        bins: int = 15, pairs: int = 10) -> TestSetReport:
    """Score ``probs [M, N]`` against ``labels [M]`` (indices into ``class_names``).

    Args:
        bins: equal-width bins of the reliability diagram and the ECE.
        pairs: most confused pairs kept.

    Raises:
        ValueError: no examples, shapes that disagree, labels outside ``0..N-1``, or rows
            that are not probability distributions.
    """
    if probs.dim() != 2 or labels.shape != probs.shape[:1] or len(labels) == 0:
        raise ValueError(f"need probs [M, N] and labels [M] with M >= 1, got "
                         f"{tuple(probs.shape)} and {tuple(labels.shape)}")
    m, n = probs.shape
    if n != len(class_names):
        raise ValueError(f"{n} probability columns but {len(class_names)} class names")
    if int(labels.min()) < 0 or int(labels.max()) >= n:
        raise ValueError(f"labels must be in 0..{n - 1}")
    sums = probs.double().sum(1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3) or bool((probs < 0).any()):
        raise ValueError("each row of probs must be a probability distribution")
    top, pred = probs.max(1)  # [M] each
    correct = pred == labels
    hits = int(correct.sum())
    low, high = wilson_interval(hits, m)
    matrix = confusion_counts(labels, pred, n)
    per_class = _per_class(matrix, class_names)
    present = [c.f1 for c in per_class if c.support > 0]
    off = matrix.clone()
    off.fill_diagonal_(0)
    flat = off.flatten()
    order = torch.argsort(flat, descending=True, stable=True)[:pairs]
    confused = [{"true": class_names[int(i) // n], "predicted": class_names[int(i) % n],
                 "count": int(flat[i])} for i in order if int(flat[i]) > 0]
    reliability, ece = _reliability(top, correct, bins)
    return TestSetReport(examples=m, accuracy=hits / m, accuracy_low=low, accuracy_high=high,
                         macro_f1=sum(present) / len(present), ece=ece,
                         classes=list(class_names), per_class=per_class,
                         confusion=matrix.tolist(), confused_pairs=confused,
                         reliability=reliability)
