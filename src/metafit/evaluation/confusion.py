"""Per-query predictions on the fixed evaluation episodes, and confusion matrices over them.

Labels are episode-relative: label ``j`` of an episode is the j-th class its sampler drew,
a fresh random map per episode (:mod:`metafit.data.sampler`). Two aggregations over the
episodes therefore mean different things:

- **by true class** (:meth:`Predictions.by_class`): each query's true and predicted label
  mapped back through its episode's ``classes`` to dataset class ids. Row ``c`` says where
  the queries of class ``c`` went, *in the episodes that drew it*: cell ``(c, d)`` can only
  be non-zero where ``c`` and ``d`` were drawn together, so read it row by row (which
  classes are mistaken for which), not as a global confusion. Meaningful when the split
  has few classes relative to the episodes (each pair meets often: 20 test intents);
  with hundreds of classes most pairs never meet and :meth:`Predictions.confused_pairs`
  (the most frequent mistakes) is what to read.
- **by in-episode label** (:meth:`Predictions.by_position`): true label against predicted
  label. Classes are assigned to labels at random, so an ideal learner's matrix is
  symmetric with an even diagonal; mass gathering in one *column* shows a bias towards an
  output unit (a meta-learned head's bias, e.g. MAML's), which no class explains.

Both matrices count every query of every episode once: they sum to episodes x ways x
queries, and their trace over that total is the accuracy the protocol reports (the same
final-step outputs, up to float rounding when the feature cache batches rows differently).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metafit.episodes import Episodes
from metafit.evaluation.classification import confusion_counts
from metafit.evaluation.feature_cache import cached_body
from metafit.functional.inner import final

__all__ = ["Predictions", "predict_episodes"]


@dataclass(frozen=True)
class Predictions:
    """``true [E, N*Q]`` and ``pred [E, N*Q]`` in-episode labels of every query of ``E``
    episodes of ``ways`` classes; ``classes [E, N]`` the dataset class id behind each label
    (None when the sampler did not say)."""

    true: Tensor
    pred: Tensor
    ways: int
    classes: Tensor | None = None

    @property
    def accuracy(self) -> float:
        """The fraction of queries predicted right, over all episodes."""
        return float((self.true == self.pred).double().mean())

    def by_position(self) -> Tensor:
        """``[N, N]`` counts: row = true in-episode label, column = predicted label."""
        return confusion_counts(self.true.flatten(), self.pred.flatten(), self.ways)

    def class_ids(self) -> tuple[Tensor, Tensor]:
        """``(true, pred)`` dataset class ids of every query, each ``[E, N*Q]``.

        Raises:
            ValueError: the episodes carry no class ids.
        """
        if self.classes is None:
            raise ValueError("these episodes carry no class ids (Episodes.classes)")
        return self.classes.gather(1, self.true), self.classes.gather(1, self.pred)

    def seen_classes(self) -> list[int]:
        """The dataset class ids drawn in any episode, sorted."""
        if self.classes is None:
            return []
        return sorted(set(self.classes.flatten().tolist()))

    def by_class(self) -> tuple[list[int], Tensor]:
        """The classes drawn (sorted dataset ids) and ``[C, C]`` counts over them: row =
        the query's true class, column = the class its predicted label stood for."""
        seen = self.seen_classes()
        true, pred = self.class_ids()
        index = torch.full((int(max(seen)) + 1,), -1, dtype=torch.long)
        index[torch.tensor(seen)] = torch.arange(len(seen))
        return seen, confusion_counts(index[true.flatten()], index[pred.flatten()], len(seen))

    def confused_pairs(self, top: int = 10) -> list[tuple[int, int, int]]:
        """The ``top`` most frequent mistakes as ``(true class id, predicted class id,
        count)``, most frequent first (ties: lower ids first)."""
        true, pred = (t.flatten() for t in self.class_ids())
        wrong = true != pred
        pairs: dict[tuple[int, int], int] = {}
        for t, p in zip(true[wrong].tolist(), pred[wrong].tolist(), strict=True):
            pairs[(t, p)] = pairs.get((t, p), 0) + 1
        ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(t, p, n) for (t, p), n in ranked[:top]]


def predict_episodes(algo: Any, episodes: Episodes, steps: int | None = None,
                     cache_features: bool = True) -> Predictions:
    """Adapt ``algo`` to each episode's support set (``steps`` inner steps, default the
    algorithm's evaluation steps) and predict its query set as one batch, as
    :func:`~metafit.evaluation.protocol.evaluate` scores it; ``cache_features`` as there.

    Raises:
        ValueError: regression episodes (nothing to confuse).
    """
    if episodes.is_regression:
        raise ValueError("confusion needs classification episodes, not regression ones")
    n_steps = int(algo.default_eval_steps) if steps is None else int(steps)
    device = next(algo.parameters(), torch.empty(0)).device
    was_training = algo.training
    algo.eval()
    preds = []
    cache = cached_body(algo.model) if cache_features else nullcontext()
    with torch.no_grad(), cache:
        for task in episodes:
            task = task.to(device)
            params, _ = final(algo.trajectory(task.support_x, task.support_y, n_steps))
            learner = algo.make_learner(params, task.support_y, copy=False)
            preds.append(learner(task.query_x).argmax(-1).cpu())  # [N*Q]
    algo.train(was_training)
    return Predictions(true=episodes.query_y.cpu(), pred=torch.stack(preds),
                       ways=int(episodes.support_y.max()) + 1,
                       classes=None if episodes.classes is None else episodes.classes.cpu())
