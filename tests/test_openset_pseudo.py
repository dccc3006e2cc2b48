"""benchmarks/openset_pseudo.py: the pseudo-outlier scores are built as their docstrings
say, and separate known from unknown clusters where the answer is plain."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from metafit.evaluation.openset import auroc


@pytest.fixture()
def pseudo(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import openset_pseudo

    return openset_pseudo


def _clusters(seed: int, centres: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` unit points around each row of ``centres [C, F]`` -> ``[C * n, F]``."""
    g = torch.Generator().manual_seed(seed)
    noise = 0.1 * torch.randn(len(centres), n, centres.shape[1], generator=g)
    return F.normalize(centres[:, None] + noise, dim=-1).reshape(-1, centres.shape[1])


def test_mixup_outliers_mix_two_different_classes(pseudo) -> None:  # type: ignore[no-untyped-def]
    # one-hot support features: a mixed point is nonzero on exactly two class coordinates
    support = torch.eye(6).repeat_interleave(2, 0)  # [12, 6], two per class
    labels = torch.arange(6).repeat_interleave(2)
    fake = pseudo.mixup_outliers(support, labels, 50, 0.3, 0.7, torch.Generator().manual_seed(0))
    assert fake.shape == (50, 6)
    assert torch.allclose(fake.norm(dim=-1), torch.ones(50), atol=1e-6)
    assert ((fake > 1e-6).sum(-1) == 2).all()  # never two points of one class
    ratio = fake.topk(2, -1).values
    assert (ratio[:, 1] / ratio[:, 0] >= 0.3 / 0.7 - 1e-5).all()  # lam within [0.3, 0.7]


def test_seed_rows_separate_unknown_clusters(pseudo) -> None:  # type: ignore[no-untyped-def]
    centres = F.normalize(torch.randn(14, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    support = _clusters(2, centres[:10], 5)
    labels = torch.arange(10).repeat_interleave(5)
    d = {"support": support, "labels": labels, "in": _clusters(3, centres[:10], 20),
         "in_y": torch.arange(10).repeat_interleave(20), "out": _clusters(4, centres[10:], 20)}
    rows = {r["score"]: r for r in pseudo.seed_rows(d, 0, [(50, 0.3, 0.7)], drop=3, rounds=4)}
    assert set(rows) == {"max_prob T=1", "mixup outliers (50, 0.3-0.7)",
                         "leave-classes-out stacking (3 x 4)"}
    for r in rows.values():
        assert r["accuracy"] > 0.95
    assert rows["leave-classes-out stacking (3 x 4)"]["auroc"] > 0.9
    assert rows["max_prob T=1"]["auroc"] > 0.9


def test_stacked_score_ranks_held_in_above_removed(pseudo) -> None:  # type: ignore[no-untyped-def]
    centres = F.normalize(torch.randn(12, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    support = _clusters(6, centres[:8], 5)
    labels = torch.arange(8).repeat_interleave(5)
    score = pseudo.leave_classes_out(support, labels, 8, 2, 5, torch.Generator().manual_seed(0))
    classify = pseudo.head(support, labels, 8)
    x_in, x_out = _clusters(7, centres[:8], 10), _clusters(8, centres[8:], 10)
    assert auroc(score(classify(x_in), x_in), score(classify(x_out), x_out)) > 0.9
