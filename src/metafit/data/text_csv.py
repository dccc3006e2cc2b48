"""Labelled text from a table, grouped by class: BANKING77's ``text,category`` CSV format
(Casanueva et al. 2020, "Efficient Intent Detection with Dual Sentence Encoders") or any
CSV, JSON Lines or Parquet file or ``datasets`` directory, by column names (the format by
the file's suffix: :mod:`metafit.data.tables`).

A CSV file is read once with the :mod:`csv` module (quoted fields may hold commas, quotes
and newlines), as UTF-8 (a leading byte-order mark is ignored). Texts and labels are
stripped of surrounding whitespace. Blank lines are skipped; every other row must have
as many fields as the header (a comma in an unquoted text would otherwise shift the
label), unless ``lenient=True`` skips such rows with a warning. The other formats are
read as strictly (:mod:`metafit.data.tables`); their ``lines`` are the line (JSON Lines)
or the row counted from 0 (Parquet, ``datasets``) of each text. Examples are then
grouped by class, so global index ``i`` is ``texts[i]`` and the examples of class ``c``
are ``offsets[c] .. offsets[c] + counts[c] - 1``, as
:class:`~metafit.data.base.ClassDataset` requires.

After :meth:`TextCSV.tokenize` (what the recipes do), :meth:`TextCSV.gather` returns token
ids ``[*, L]`` (long, padded), tokenised once for the whole file and cached on disk; before
it, it returns the example indices themselves (indices into :attr:`TextCSV.texts`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from metafit.data.errors import DatasetError
from metafit.data.rows import MAX_TABLE_BYTES, SHOW
from metafit.data.tables import text_rows

__all__ = ["TextCSV"]

log = logging.getLogger(__name__)


class TextCSV:
    """Text examples from a table, grouped by class (a ``ClassDataset``).

    Args:
        path: a ``.csv`` (UTF-8, with a header row), ``.jsonl`` or ``.parquet`` file, or a
            directory written by ``datasets``' ``save_to_disk``.
        text_column: the column holding the text.
        label_column: the column holding the class name.
        classes: the class names, in the order that fixes their ids; every label in the
            file must be one of them (a class absent from the file gets 0 examples). By
            default, the sorted distinct labels.
        lenient: CSV only: skip rows with more or fewer fields than the header, with a
            warning naming the file and their lines, instead of failing on them.
        max_bytes: the largest file read (checked before reading).

    Attributes:
        classes: ``C`` class names; ``counts [C]``, ``offsets [C]`` (long).
        texts: ``N`` texts, grouped by class (``texts[i]`` is global index ``i``).
        targets: ``[N]`` class id of each text (long); ``labels``: its class name.
        lines: the line on which each text's record starts (the row, from 0, of a
            Parquet file or ``datasets`` directory).

    Raises:
        DatasetError: (a ``ValueError``) a missing file, bytes that are not UTF-8, a missing
            column, a row with more or fewer fields than the header (unless ``lenient``),
            empty texts or labels, a label not in ``classes``: the message names the file
            and the line numbers.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        text_column: str = "text",
        label_column: str = "category",
        classes: Sequence[str] | None = None,
        lenient: bool = False,
        max_bytes: int = MAX_TABLE_BYTES,
    ) -> None:
        self.path = Path(path)
        rows = text_rows(self.path, text_column, label_column, lenient, max_bytes)
        texts, labels, lines = rows.inputs, rows.labels, rows.places
        if classes is None:
            names = sorted(set(labels))
        else:
            names = [str(c) for c in classes]
            dup = sorted({c for c in names if names.count(c) > 1})
            if dup:
                raise ValueError(f"TextCSV: classes lists {dup} more than once")
        ids = {name: i for i, name in enumerate(names)}
        unknown = [(ln, lab) for ln, lab in zip(lines, labels, strict=True) if lab not in ids]
        if unknown:
            bad = sorted({lab for _, lab in unknown})
            raise DatasetError(
                f"{self.path}: label(s) {bad[:SHOW]} not in the given classes, on "
                f"{rows.where([ln for ln, _ in unknown])}"
            )
        targets = torch.tensor([ids[lab] for lab in labels], dtype=torch.long)  # [N]
        self._set(texts, targets, names, lines)
        log.debug("%s: %d texts in %d classes", self.path, len(self), len(self.classes))

    def _set(self, texts: list[str], targets: Tensor, classes: list[str], lines: list[int]) -> None:
        """Group by class (stable) and fill the attributes."""
        order = torch.argsort(targets, stable=True).tolist()
        self.texts: list[str] = [texts[i] for i in order]
        self.lines: list[int] = [lines[i] for i in order]
        self.targets: Tensor = targets[order]  # [N]
        self.classes: list[str] = list(classes)
        self.labels: list[str] = [self.classes[t] for t in self.targets.tolist()]
        self.counts: Tensor = torch.bincount(self.targets, minlength=len(self.classes))  # [C]
        self.offsets: Tensor = torch.cumsum(self.counts, 0) - self.counts  # [C]
        self.tokens: Tensor | None = None  # [N, L] after tokenize()
        self._order = order

    def tokenize(self, model_dir: str | Path | None, max_length: int) -> TextCSV:
        """Tokenise every text once with the tokenizer of ``model_dir`` (None: the
        packaged all-MiniLM-L6-v2) into :attr:`tokens` ``[N, max_length]``; from then on
        :meth:`gather` returns token ids. Cached on disk; texts longer than
        ``max_length`` tokens are truncated with a warning. Returns ``self``."""
        from metafit.models.tokenizer import tokenize

        self.tokens = tokenize(self.texts, model_dir, max_length)  # [N, L]
        return self

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def gather(self, index: Tensor) -> Tensor:
        """The examples at global indices: token ids ``index [*s]`` -> ``[*s, L]`` long
        after :meth:`tokenize`, else the indices themselves ``[*s]``."""
        index = torch.as_tensor(index).long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(
                f"TextCSV.gather: indices {int(index.min())}..{int(index.max())} out of "
                f"range for {len(self)} examples"
            )
        if self.tokens is not None:
            return self.tokens[index.reshape(-1)].reshape(*index.shape, -1)  # [*s, L]
        return index.clone()

    def examples(self, c: int) -> list[str]:
        """The texts of class ``c``."""
        start = int(self.offsets[c])
        return self.texts[start : start + int(self.counts[c])]

    def subset(self, class_ids: Sequence[int]) -> TextCSV:
        """A dataset over the given classes only (renumbered 0.. in the order given)."""
        ids = [int(c) for c in class_ids]
        new = object.__new__(TextCSV)
        new.path = self.path
        texts: list[str] = []
        lines: list[int] = []
        targets: list[int] = []
        for j, c in enumerate(ids):
            start, end = int(self.offsets[c]), int(self.offsets[c] + self.counts[c])
            texts += self.texts[start:end]
            lines += self.lines[start:end]
            targets += [j] * (end - start)
        names = [self.classes[c] for c in ids]
        new._set(texts, torch.tensor(targets, dtype=torch.long), names, lines)
        if self.tokens is not None:
            rows = torch.cat([torch.arange(int(self.offsets[c]),
                                           int(self.offsets[c] + self.counts[c]))
                              for c in ids]) if ids else torch.zeros(0, dtype=torch.long)
            new.tokens = self.tokens[rows][new._order]  # [N', L], in the new order
        return new

    def take(self, index: Tensor) -> TextCSV:
        """A dataset of the texts at the global indices ``index [M]``, over the classes
        that keep any (renumbered 0.. in order)."""
        rows = torch.as_tensor(index, dtype=torch.long).tolist()
        kept = sorted({int(self.targets[i]) for i in rows})
        remap = {c: j for j, c in enumerate(kept)}
        new = object.__new__(TextCSV)
        new.path = self.path
        targets = torch.tensor([remap[int(self.targets[i])] for i in rows], dtype=torch.long)
        new._set([self.texts[i] for i in rows], targets, [self.classes[c] for c in kept],
                 [self.lines[i] for i in rows])
        if self.tokens is not None:
            new.tokens = self.tokens[torch.tensor(rows, dtype=torch.long)][new._order]
        return new

    def __repr__(self) -> str:
        return f"TextCSV({str(self.path)!r}, classes={self.num_classes}, examples={len(self)})"
