"""Adapting a meta-trained algorithm to one labelled support set and scoring it on a
labelled test set of any size (BANKING77's 77-way protocol, a user's own data).

Episodes keep the query set small; here the test set can hold thousands of examples, so
predictions run in batches under ``torch.no_grad``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from metafit.algorithms.base import Algorithm, Learner

__all__ = ["predict", "adapt_and_score", "FitScore"]


@dataclass
class FitScore:
    """Accuracy of an adapted learner on a test set, and its predictions."""

    accuracy: float
    predictions: Tensor  # [M] long
    support: int
    test: int
    steps: int


@torch.no_grad()
def predict(learner: Learner, x: Tensor, batch: int = 256, pad_id: int | None = None
            ) -> Tensor:
    """Outputs of ``learner`` on ``x [M, *x]`` in batches: ``[M, out]``.

    For token ids ``x [M, L]`` with padding ``pad_id``, the rows go through the model
    longest first, so that each batch (cut to its longest text by the text body) holds
    texts of similar length: the outputs are the same, in the input order, with less
    padding computed (the speed-up: ``benchmarks/text_speed.py``).
    """
    if len(x) == 0:
        raise ValueError("predict: no inputs")
    order = None
    if pad_id is not None and x.dim() == 2 and not x.is_floating_point():
        from metafit.models.tokenizer import length_order

        order = length_order(x, pad_id)  # [M]
        x = x[order]
    out = torch.cat([learner(x[i:i + batch]) for i in range(0, len(x), batch)])  # [M, out]
    if order is None:
        return out
    unsorted = torch.empty_like(out)
    unsorted[order] = out
    return unsorted


def adapt_and_score(algo: Algorithm, support_x: Tensor, support_y: Tensor, test_x: Tensor,
                    test_y: Tensor, steps: int | None = None, batch: int = 256) -> FitScore:
    """Adapt ``algo`` on ``support_x [S, *x]``, ``support_y [S]`` (labels ``0..N-1``, every
    label present) for ``steps`` steps and score ``test_x [M, *x]`` against ``test_y [M]``.

    Raises:
        ValueError: empty sets, labels outside ``0..N-1`` in the test set, a label with no
            support example, or mismatched lengths.
    """
    if len(support_x) != len(support_y) or len(test_x) != len(test_y):
        raise ValueError("inputs and labels differ in length")
    if len(support_y) == 0 or len(test_y) == 0:
        raise ValueError("the support and test sets must not be empty")
    ways = int(support_y.max()) + 1
    missing = sorted(set(range(ways)) - set(support_y.tolist()))
    if missing:
        raise ValueError(f"labels {missing[:10]} have no support example")
    if int(test_y.min()) < 0 or int(test_y.max()) >= ways:
        raise ValueError(f"test labels must be in 0..{ways - 1}, the support set's labels")
    n_steps = algo.default_eval_steps if steps is None else int(steps)
    was_training = algo.training
    algo.eval()
    try:
        learner = algo.adapt(support_x, support_y, steps=n_steps)
        pad_id = getattr(algo.model.body, "pad_id", None)  # text bodies: sort by length
        predictions = predict(learner, test_x, batch, pad_id).argmax(-1)  # [M]
    finally:
        algo.train(was_training)
    accuracy = float((predictions == test_y).float().mean())
    return FitScore(accuracy, predictions, len(support_y), len(test_y), n_steps)
