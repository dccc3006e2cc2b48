"""Open-set scores and metrics (metafit.evaluation.openset) against brute-force oracles."""

from __future__ import annotations

import itertools

import pytest
import torch

from metafit.evaluation.openset import (
    REJECT_SCORES,
    auroc,
    false_accepts_at_recall,
    reject_scores,
    threshold_for_recall,
)


def _auroc_pairs(p: torch.Tensor, q: torch.Tensor) -> float:
    """AUROC by counting every (in, out) pair: the definition, O(P Q)."""
    total = 0.0
    for a, b in itertools.product(p.tolist(), q.tolist()):
        total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / (len(p) * len(q))


@pytest.mark.parametrize("seed", range(5))
def test_auroc_equals_pair_count_with_ties(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    p = torch.randint(0, 6, (23,), generator=g).float()  # many ties
    q = torch.randint(0, 6, (17,), generator=g).float() - 1
    assert auroc(p, q) == pytest.approx(_auroc_pairs(p, q), abs=1e-12)


def test_auroc_extremes() -> None:
    assert auroc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 0.0
    assert auroc(torch.ones(4), torch.ones(3)) == 0.5


def test_threshold_keeps_the_recall() -> None:
    scores = torch.arange(100, dtype=torch.float)  # 0..99
    t = threshold_for_recall(scores, 0.95)
    assert t == 5.0 and int((scores >= t).sum()) == 95
    assert threshold_for_recall(scores, 1.0) == 0.0
    # 7 scores at 95%: floor(0.35) = 0 may be rejected -> the minimum
    assert threshold_for_recall(torch.tensor([3.0, 1, 2, 7, 5, 4, 6]), 0.95) == 1.0
    with pytest.raises(ValueError, match="recall"):
        threshold_for_recall(scores, 0.0)


@pytest.mark.parametrize("seed", range(3))
def test_false_accepts_against_a_scan(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    p, q = torch.randn(40, generator=g) + 1, torch.randn(30, generator=g)
    # oracle: the largest threshold among candidate values keeping >= 38 of 40 (95%)
    ok = [t for t in p.tolist() if int((p >= t).sum()) >= 38]
    t = max(ok)
    assert false_accepts_at_recall(p, q, 0.95) == pytest.approx(float((q >= t).float().mean()))


def test_scores_by_definition() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g)
    t = 2.0
    assert torch.allclose(reject_scores("max_prob", logits, t),
                          torch.softmax(logits / t, -1).max(-1).values)
    assert torch.allclose(reject_scores("max_logit", logits), logits.max(-1).values)
    energy = torch.tensor([t * torch.log(torch.exp(r / t).sum()) for r in logits])
    assert torch.allclose(reject_scores("energy", logits, t), energy, atol=1e-6)

    feats = torch.randn(6, 8, generator=g)
    support = torch.randn(10, 8, generator=g)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 0])

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(a @ b / (a.norm() * b.norm()))

    near = torch.tensor([max(cos(f, s) for s in support) for f in feats])
    assert torch.allclose(reject_scores("nearest", logits, features=feats,
                                        support_features=support), near, atol=1e-6)
    unit = support / support.norm(dim=1, keepdim=True)
    protos = [unit[labels == c].mean(0) for c in range(4)]
    proto = torch.tensor([max(cos(f, p) for p in protos) for f in feats])
    got = reject_scores("prototype", logits, features=feats, support_features=support,
                        support_labels=labels)
    assert torch.allclose(got, proto, atol=1e-6)


def test_feature_scores_need_features() -> None:
    with pytest.raises(ValueError, match="features"):
        reject_scores("nearest", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="unknown reject score"):
        reject_scores("entropy", torch.zeros(2, 3))
    assert set(REJECT_SCORES) == {"max_prob", "max_logit", "energy", "prototype", "nearest"}
