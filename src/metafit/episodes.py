"""Few-shot episodes: one task (`Episode`) or many stacked on a task axis (`Episodes`).

An episode is an N-way K-shot classification task (or a K-shot regression task): a
*support* set the learner adapts on and a *query* set it is scored on. Labels are always
remapped to ``0..N-1`` per task, in a random order, so no dataset class is tied to an
output unit (Vinyals et al. 2016, "Matching Networks for One Shot Learning").

Shapes (T tasks, N ways, K shots, Q queries per class, ``*x`` the example shape)::

    support_x [T, N*K, *x]     support_y [T, N*K]   (long; float [T, K, 1] for regression)
    query_x   [T, N*Q, *x]     query_y   [T, N*Q]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Episode", "Episodes"]


@dataclass(frozen=True)
class Episode:
    """One task: ``support_x [N*K, *x]``, ``support_y [N*K]``, ``query_x [N*Q, *x]``,
    ``query_y [N*Q]``. ``classes [N]`` (long) is the dataset class index behind each label,
    when known (``dataset.classes[episode.classes[label]]`` names it)."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor | None = None

    @property
    def ways(self) -> int:
        """Number of distinct labels in the support set (1 for regression)."""
        if self.support_y.is_floating_point():
            return 1
        return int(self.support_y.max().item()) + 1

    def to(self, device: torch.device | str) -> Episode:
        """The same episode with every tensor on ``device``."""
        return Episode(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            None if self.classes is None else self.classes.to(device),
        )


@dataclass(frozen=True)
class Episodes:
    """A batch of T tasks of identical shape, stacked on a leading task axis.

    ``support_x [T, N*K, *x]``, ``support_y [T, N*K]``, ``query_x [T, N*Q, *x]``,
    ``query_y [T, N*Q]``. ``classes [T, N]`` (long, optional): the dataset class index of
    each label of each task.
    Indexing with an int gives an :class:`Episode`; with a slice, an :class:`Episodes`.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    classes: Tensor | None = None

    def __post_init__(self) -> None:
        t = self.support_x.shape[0]
        for name in ("support_y", "query_x", "query_y"):
            if getattr(self, name).shape[0] != t:
                raise ValueError(
                    f"Episodes: {name} has {getattr(self, name).shape[0]} tasks on axis 0, "
                    f"support_x has {t}"
                )
        if self.support_x.shape[1] != self.support_y.shape[1]:
            raise ValueError(
                f"Episodes: support_x has {self.support_x.shape[1]} examples per task but "
                f"support_y has {self.support_y.shape[1]} labels"
            )
        if self.query_x.shape[1] != self.query_y.shape[1]:
            raise ValueError(
                f"Episodes: query_x has {self.query_x.shape[1]} examples per task but "
                f"query_y has {self.query_y.shape[1]} labels"
            )

    def __len__(self) -> int:
        return int(self.support_x.shape[0])

    @property
    def num_tasks(self) -> int:
        return len(self)

    @property
    def is_regression(self) -> bool:
        return bool(self.support_y.is_floating_point())

    @property
    def ways(self) -> int:
        """Labels per task (1 for regression)."""
        if self.is_regression:
            return 1
        return int(self.support_y.max().item()) + 1

    def __getitem__(self, index: int | slice) -> Episode | Episodes:
        if isinstance(index, slice):
            return Episodes(
                self.support_x[index],
                self.support_y[index],
                self.query_x[index],
                self.query_y[index],
                None if self.classes is None else self.classes[index],
            )
        if not -len(self) <= index < len(self):
            raise IndexError(f"task index {index} out of range for {len(self)} tasks")
        return Episode(
            self.support_x[index],
            self.support_y[index],
            self.query_x[index],
            self.query_y[index],
            None if self.classes is None else self.classes[index],
        )

    def __iter__(self):  # type: ignore[no-untyped-def]
        for i in range(len(self)):
            yield self[i]

    def to(self, device: torch.device | str) -> Episodes:
        """The same batch with every tensor on ``device``."""
        return Episodes(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            None if self.classes is None else self.classes.to(device),
        )

    @staticmethod
    def stack(episodes: list[Episode]) -> Episodes:
        """Stack same-shaped episodes on a new task axis."""
        if not episodes:
            raise ValueError("Episodes.stack needs at least one episode")
        classes = None
        if all(e.classes is not None for e in episodes):
            classes = torch.stack([e.classes for e in episodes])  # type: ignore[misc]
        return Episodes(
            torch.stack([e.support_x for e in episodes]),
            torch.stack([e.support_y for e in episodes]),
            torch.stack([e.query_x for e in episodes]),
            torch.stack([e.query_y for e in episodes]),
            classes,
        )
