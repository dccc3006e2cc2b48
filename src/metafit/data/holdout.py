"""The ``all_classes`` split: every class in every split, the examples of each class
divided between them, so that meta-training sees every class the deployed model will
meet, and validation and test score held-out examples of those same classes.

Of a class's ``n`` examples, ``held = round(fraction * n)`` (at most ``n - 1``: training
keeps one) are held out: the first ``ceil(held / 2)`` of a shuffle go to ``val``, the
next ``floor(held / 2)`` to ``test``, the rest to ``train``. The shuffle is seeded with the
split seed and the class's *name*, so a class's division does not depend on which other
classes the dataset holds. A class left without examples in a split is not in it.

What a test score from this split measures: adaptation to new examples of classes seen in
meta-training, not to unseen classes (the class-disjoint splits measure that).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["holdout_examples", "holdout_sizes"]


def holdout_sizes(n: int, fraction: float) -> tuple[int, int, int]:
    """``(train, val, test)`` examples of a class of ``n`` under ``fraction``."""
    if n <= 0:
        return 0, 0, 0
    held = min(int(fraction * n + 0.5), n - 1)
    val = (held + 1) // 2
    return n - held, val, held - val


def holdout_examples(classes: Sequence[str], counts: Tensor, split: str, seed: int,
                     fraction: float) -> Tensor:
    """The global indices (sorted) of ``split``'s examples, for a dataset whose examples
    are grouped by class (``counts [C]`` of the ``classes``, in order).

    Raises:
        ValueError: an unknown split, or a fraction outside (0, 1).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must lie in (0, 1), got {fraction}")
    picked: list[int] = []
    offset = 0
    for name, n in zip(classes, counts.tolist(), strict=True):
        order = list(range(n))
        random.Random(f"{seed}/{name}").shuffle(order)
        train, val, _ = holdout_sizes(n, fraction)
        held = n - train
        part = {"val": order[:val], "test": order[val:held], "train": order[held:]}[split]
        picked += [offset + i for i in sorted(part)]
        offset += n
    return torch.tensor(picked, dtype=torch.long)
