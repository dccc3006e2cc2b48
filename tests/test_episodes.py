"""Episode / Episodes containers."""

from __future__ import annotations

import pytest
import torch

from metafit import Episode, Episodes


def make(t: int = 3) -> Episodes:
    return Episodes(torch.rand(t, 5, 1, 2, 2), torch.arange(5).repeat(t, 1),
                    torch.rand(t, 10, 1, 2, 2), torch.arange(5).repeat(t, 2),
                    torch.arange(5).repeat(t, 1))


def test_indexing_gives_episode_and_slices() -> None:
    eps = make()
    e = eps[1]
    assert isinstance(e, Episode) and e.support_x.shape == (5, 1, 2, 2) and e.ways == 5
    assert torch.equal(e.query_x, eps.query_x[1])
    assert len(eps[0:2]) == 2 and isinstance(eps[0:2], Episodes)
    assert len(list(eps)) == 3
    with pytest.raises(IndexError):
        eps[3]


def test_stack_round_trips() -> None:
    eps = make()
    again = Episodes.stack(list(eps))
    assert torch.equal(again.support_x, eps.support_x) and torch.equal(again.classes, eps.classes)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="support_y has 4 labels"):
        Episodes(torch.rand(2, 5, 3), torch.zeros(2, 4, dtype=torch.long), torch.rand(2, 5, 3),
                 torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="query_x has 1 tasks"):
        Episodes(torch.rand(2, 5, 3), torch.zeros(2, 5, dtype=torch.long), torch.rand(1, 5, 3),
                 torch.zeros(2, 5, dtype=torch.long))


def test_regression_episodes_have_one_way() -> None:
    x_s, x_q = torch.rand(2, 5, 1), torch.rand(2, 7, 1)
    eps = Episodes(x_s, torch.rand(2, 5, 1), x_q, torch.rand(2, 7, 1))
    assert eps.is_regression and eps.ways == 1


def test_to_moves_the_class_indices_too() -> None:
    # FineTune gathers global labels from `classes` on the episodes' device (a CUDA run
    # crashed when `to` left them on the CPU)
    eps = Episodes(torch.zeros(2, 3, 1), torch.zeros(2, 3, dtype=torch.long),
                   torch.zeros(2, 3, 1), torch.zeros(2, 3, dtype=torch.long),
                   torch.arange(6).view(2, 3))
    moved = eps.to("meta")
    assert moved.classes is not None and moved.classes.device.type == "meta"
    assert moved[0].to("meta").classes.device.type == "meta"  # type: ignore[union-attr]
    assert Episodes(eps.support_x, eps.support_y, eps.query_x, eps.query_y).to(
        "meta").classes is None
