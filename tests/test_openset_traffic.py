"""benchmarks/openset_traffic.py: the transductive reject scores do what their docstrings say
on clusters whose answer is known (unit features; in-scope near the support set)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from metafit.evaluation.openset import auroc


@pytest.fixture()
def traffic(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    import openset_traffic

    return openset_traffic


def _clusters(seed: int, centres: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` unit points around each row of ``centres [C, F]`` -> ``[C * n, F]``."""
    g = torch.Generator().manual_seed(seed)
    noise = 0.15 * torch.randn(len(centres), n, centres.shape[1], generator=g,
                               dtype=torch.float64)
    return F.normalize(centres[:, None].double() + noise, dim=-1).reshape(-1, centres.shape[1])


def _setup(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(support, in-scope traffic, out-of-scope traffic): 3 known and 2 unknown centres."""
    centres = F.normalize(torch.randn(5, 16, generator=torch.Generator().manual_seed(seed)),
                          dim=-1)
    support = _clusters(seed + 1, centres[:3], 5)
    return support, _clusters(seed + 2, centres[:3], 40), _clusters(seed + 3, centres[3:], 40)


def test_knn_score_is_the_mean_of_the_largest_cosines(traffic) -> None:  # type: ignore[no-untyped-def]
    x = F.normalize(torch.randn(4, 8, dtype=torch.float64), dim=-1)
    refs = F.normalize(torch.randn(9, 8, dtype=torch.float64), dim=-1)
    want = torch.stack([(x[i] @ refs.T).sort(descending=True).values[:3].mean()
                        for i in range(4)])
    assert torch.allclose(traffic.knn_score(x, refs, 3), want)
    assert torch.allclose(traffic.knn_score(x, refs, 99), (x @ refs.T).mean(-1))


@pytest.mark.parametrize("seed", [0, 1])
def test_pseudo_negatives_come_from_the_unknown_clusters(traffic, seed: int) -> None:  # type: ignore[no-untyped-def]
    support, known, unknown = _setup(seed)
    log = torch.cat([known, unknown])
    picked = traffic.pseudo_negatives(support, log)
    assert len(picked) == int(traffic.NEGATIVE_FRACTION * len(log))
    assert bool((picked >= len(known)).all()), "a known-cluster point was taken as negative"


@pytest.mark.parametrize("seed", [0, 1])
def test_traffic_scores_rank_known_above_unknown(traffic, seed: int) -> None:  # type: ignore[no-untyped-def]
    support, known, unknown = _setup(seed)
    log = torch.cat([known[::2], unknown[::2]])
    scores = traffic.traffic_scores(support, log)
    assert set(scores) == {"density ratio", "pseudo-negatives", "label spreading"}
    for name, fn in scores.items():
        s_in, s_out = fn(known[1::2]), fn(unknown[1::2])
        assert s_in.shape == (len(known[1::2]),)
        assert auroc(s_in, s_out) > 0.99, name


def test_label_spreading_keeps_the_seed_labels_signs(traffic) -> None:  # type: ignore[no-untyped-def]
    support, known, unknown = _setup(3)
    log = torch.cat([known, unknown])
    negatives = traffic.pseudo_negatives(support, log)
    nodes, labels = traffic.spread(support, log, negatives)
    assert nodes.shape == (len(support) + len(log), support.shape[1])
    assert bool((labels[: len(support)] > 0).all())
    assert bool((labels[len(support) + negatives] < 0).all())
