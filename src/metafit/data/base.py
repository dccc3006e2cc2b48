"""The dataset protocols: a :class:`ClassDataset` (classes -> examples) and a
:class:`TaskFamily` (a generator of regression/classification tasks, e.g. sinusoids).

Every concrete image dataset decodes its files once into a single tensor held by
:class:`TensorClassDataset`: ``data [num_examples, *example_shape]`` (uint8 for images),
examples grouped by class, plus ``offsets``/``counts`` per class. Sampling then needs only
index arithmetic on that tensor; it never decodes a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from metafit.episodes import Episodes

__all__ = ["ClassDataset", "TaskFamily", "TensorClassDataset"]


@runtime_checkable
class ClassDataset(Protocol):
    """Labelled examples grouped by class.

    ``classes``: class names, index = class id. ``counts [C]`` / ``offsets [C]``: examples
    of class c are the global indices ``offsets[c] .. offsets[c] + counts[c] - 1``.
    ``gather(index)`` maps long indices of any shape ``[*s]`` to examples ``[*s, *x]``.
    """

    classes: list[str]
    counts: Tensor
    offsets: Tensor

    def gather(self, index: Tensor) -> Tensor: ...

    def __len__(self) -> int: ...


@runtime_checkable
class TaskFamily(Protocol):
    """A distribution over tasks that generates its own episodes (e.g. :class:`Sinusoid`).

    ``sample_episodes(n, shots, queries, generator)`` returns ``n`` tasks with ``shots``
    support and ``queries`` query points each.
    """

    is_regression: bool

    def sample_episodes(
        self, n: int, shots: int, queries: int, generator: torch.Generator
    ) -> Episodes: ...


class TensorClassDataset:
    """A :class:`ClassDataset` over one tensor of examples.

    Args:
        data: ``[num_examples, *x]`` examples. ``uint8`` data is returned by :meth:`gather`
            as ``float32`` scaled to [0, 1]; other dtypes are returned as they are.
        targets: ``[num_examples]`` class id of each example (long, 0..C-1).
        classes: the C class names.
        invert: with uint8 data, store ``255 - x`` once at construction (white-background
            scans become strokes = 1 on a zero background), so gathering stays one pass.

    Sampling gathers rows by index from the uint8 tensor and normalises them on the fly;
    a dataset whose float32 form fits in ``FLOAT_TABLE_BYTES`` (256 MiB: Omniglot's 19,360
    rotated 28x28 images take 61 MB) keeps that form too, built on first use, so a batch of
    episodes is a single ``index_select`` (benchmarks/RESULTS.md, "Data loading and
    episode sampling").
    """

    FLOAT_TABLE_BYTES = 256 * 2**20

    def __init__(
        self,
        data: Tensor,
        targets: Tensor,
        classes: Sequence[str],
        invert: bool = False,
    ) -> None:
        if data.shape[0] != targets.shape[0]:
            raise ValueError(
                f"data has {data.shape[0]} examples but targets has {targets.shape[0]} labels"
            )
        targets = targets.long()
        if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= len(classes)):
            raise ValueError(
                f"targets must lie in 0..{len(classes) - 1} for {len(classes)} classes, "
                f"got {int(targets.min())}..{int(targets.max())}"
            )
        order = torch.argsort(targets, stable=True)
        data = data[order].contiguous()  # [num_examples, *x], grouped by class
        if invert and data.dtype == torch.uint8:
            data = 255 - data
        self.data = data
        self.targets = targets[order]  # [num_examples]
        self.classes: list[str] = list(classes)
        self.counts = torch.bincount(self.targets, minlength=len(self.classes))  # [C]
        self.offsets = torch.cumsum(self.counts, 0) - self.counts  # [C]
        self._table: Tensor | None = None
        self._table_key: tuple[object, ...] | None = None

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def example_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def gather(self, index: Tensor) -> Tensor:
        """Examples at global indices: ``index [*s]`` -> ``[*s, *x]`` (float for images)."""
        table = self._float_table()
        if table is not None:
            x = torch.index_select(table, 0, index.reshape(-1))  # [prod(s), prod(x)]
            return x.view(*index.shape, *self.data.shape[1:])
        flat = self.data.view(self.data.shape[0], -1)  # [num_examples, prod(x)]
        x = torch.index_select(flat, 0, index.reshape(-1))  # [prod(s), prod(x)]
        if x.dtype == torch.uint8:
            x = x.float().mul_(1.0 / 255.0)
        return x.view(*index.shape, *self.data.shape[1:])

    def _float_table(self) -> Tensor | None:
        """``[num_examples, prod(x)]`` float32 in [0, 1] for small uint8 datasets (else
        ``None``), rebuilt whenever ``data`` is replaced or modified in place."""
        data = self.data
        if data.dtype != torch.uint8 or data.numel() * 4 > self.FLOAT_TABLE_BYTES:
            return None
        key = (data.data_ptr(), data._version, tuple(data.shape))
        if self._table is None or self._table_key != key:
            self._table = data.reshape(data.shape[0], -1).float().mul_(1.0 / 255.0)
            self._table_key = key
        return self._table

    def examples(self, c: int) -> Tensor:
        """All examples of class ``c``: ``[counts[c], *x]``."""
        start = int(self.offsets[c])
        return self.gather(torch.arange(start, start + int(self.counts[c])))

    def rows(self, class_ids: Sequence[int]) -> Tensor:
        """The global indices of the examples of ``class_ids``, class after class in the
        order given: ``[sum of their counts]`` (long)."""
        pieces = [torch.arange(int(self.offsets[c]), int(self.offsets[c] + self.counts[c]))
                  for c in class_ids]
        return torch.cat(pieces) if pieces else torch.empty(0, dtype=torch.long)

    def subset(self, class_ids: Sequence[int]) -> TensorClassDataset:
        """A dataset over the given classes only (renumbered 0.. in the order given), its
        examples in the order of :meth:`rows`."""
        ids = torch.as_tensor(list(class_ids), dtype=torch.long)
        index = self.rows(ids.tolist())
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[ids] = torch.arange(len(ids))
        return TensorClassDataset(
            self.data[index],
            remap[self.targets[index]],
            [self.classes[c] for c in ids.tolist()],
        )

    def take(self, index: Tensor) -> TensorClassDataset:
        """A dataset of the examples at the global indices ``index [M]`` (sorted, so the
        examples stay grouped), over the classes that keep any (renumbered 0.. in order)."""
        index = torch.as_tensor(index, dtype=torch.long)
        targets = self.targets[index]  # [M]
        kept = torch.unique(targets)  # sorted
        remap = torch.full((self.num_classes,), -1, dtype=torch.long)
        remap[kept] = torch.arange(len(kept))
        return TensorClassDataset(self.data[index], remap[targets],
                                  [self.classes[c] for c in kept.tolist()])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(classes={self.num_classes}, examples={len(self)}, "
            f"example_shape={self.example_shape})"
        )
