"""Test-set scores (metafit.evaluation.classification) against hand-computed values and an
independent implementation (scikit-learn, where installed)."""

from __future__ import annotations

import math

import pytest
import torch

from metafit.evaluation.classification import (
    confusion_counts,
    score_probabilities,
    wilson_interval,
)


def _probs(pred: list[int], top: list[float], n: int) -> torch.Tensor:
    """Rows with probability ``top`` on ``pred`` and the rest spread evenly."""
    rows = torch.full((len(pred), n), 0.0, dtype=torch.float64)
    for i, (p, t) in enumerate(zip(pred, top, strict=True)):
        rows[i] = (1 - t) / (n - 1)
        rows[i, p] = t
    return rows


def test_hand_computed_scores() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = [0, 0, 1, 1, 0, 1]  # class 2 never predicted
    report = score_probabilities(_probs(pred, [0.9, 0.8, 0.6, 0.7, 0.5, 0.95], 3), labels,
                                 ["a", "b", "c"], bins=2)
    assert report.accuracy == pytest.approx(3 / 6)
    a, b, c = report.per_class
    assert (a.precision, a.recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert (b.precision, b.recall) == (pytest.approx(1 / 3), pytest.approx(1 / 2))
    assert (c.precision, c.recall, c.f1, c.support, c.predicted) == (0.0, 0.0, 0.0, 1, 0)
    f1_b = 2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2)
    assert report.macro_f1 == pytest.approx((2 / 3 + f1_b + 0) / 3)
    assert report.confusion == [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    assert report.confused_pairs[0] == {"true": "a", "predicted": "b", "count": 1}
    assert len(report.confused_pairs) == 3
    # bins [0, .5) and [.5, 1]: every top probability is >= .5 -> one bin holds all
    low, high = report.reliability
    assert (low.count, high.count) == (0, 6)
    assert report.ece == pytest.approx(abs(3 / 6 - (0.9 + 0.8 + 0.6 + 0.7 + 0.5 + 0.95) / 6))


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(81, 263)  # Wilson (1927)-style check against the formula
    p, n, z = 81 / 263, 263, 1.959963984540054
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    assert (lo + hi) / 2 == pytest.approx(centre)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] > 0.65
    assert wilson_interval(0, 5)[0] == 0.0
    with pytest.raises(ValueError):
        wilson_interval(3, 0)


def test_scores_equal_scikit_learns() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    n, m = 7, 400
    logits = torch.randn(m, n, generator=g) * 2
    labels = torch.randint(0, n, (m,), generator=g)
    logits[torch.arange(m), labels] += 1.5  # better than chance
    probs = logits.softmax(1)
    names = [f"c{i}" for i in range(n)]
    report = score_probabilities(probs, labels, names)
    pred = probs.argmax(1).numpy()
    y = labels.numpy()
    assert report.accuracy == pytest.approx(metrics.accuracy_score(y, pred))
    assert report.macro_f1 == pytest.approx(metrics.f1_score(y, pred, average="macro",
                                                             zero_division=0))
    p, r, f, s = metrics.precision_recall_fscore_support(y, pred, zero_division=0)
    assert [c.precision for c in report.per_class] == pytest.approx(list(p))
    assert [c.recall for c in report.per_class] == pytest.approx(list(r))
    assert [c.f1 for c in report.per_class] == pytest.approx(list(f))
    assert report.confusion == metrics.confusion_matrix(y, pred).tolist()
    assert sum(b.count for b in report.reliability) == m


def test_ece_is_zero_when_confidence_equals_accuracy() -> None:
    # 10 examples at top probability 0.8 (bin [0.8, 0.867)), 8 of them right
    labels = torch.tensor([0] * 8 + [1] * 2)
    report = score_probabilities(_probs([0] * 10, [0.8] * 10, 2), labels, ["x", "y"])
    assert report.ece == pytest.approx(0.0, abs=1e-12)
    assert confusion_counts(labels, torch.zeros(10, dtype=torch.long), 2).tolist() == \
        [[8, 0], [2, 0]]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="probability distribution"):
        score_probabilities(torch.ones(2, 2), torch.tensor([0, 1]), ["a", "b"])
    with pytest.raises(ValueError, match="labels must be"):
        score_probabilities(torch.full((2, 2), 0.5), torch.tensor([0, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="class names"):
        score_probabilities(torch.full((2, 2), 0.5), torch.tensor([0, 1]), ["a"])
    assert math.isfinite(score_probabilities(torch.full((1, 2), 0.5), torch.tensor([1]),
                                             ["a", "b"]).ece)
