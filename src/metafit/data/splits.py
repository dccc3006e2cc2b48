"""Build the train / val / test datasets a recipe names.

Splits are always by class (test classes are never seen in meta-training):

- ``omniglot``: by alphabet (see :mod:`metafit.data.omniglot`).
- ``glyphs``: the dataset's own deterministic class split.
- ``image_folder`` / ``image_table`` / ``text_table`` (``text_csv``): classes sorted by
  name, permuted with
  ``Random(split_seed)``, then 60% / 20% / 20% (at least one class each; ``class_split``
  gives the counts) for train / val / test; ``split_classes=false`` makes every split the
  whole dataset (a fixed label set).
- ``split_scheme: all_classes`` (Omniglot and the four above): every class in every
  split, its examples divided between them (:mod:`metafit.data.holdout`).
- ``idx``: the MNIST family serves as *test* tasks for models meta-trained elsewhere:
  every split is the whole label set.
- ``sinusoid``: one task family; each split is a differently seeded sampler over it.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Literal

from torch import Tensor

from metafit.config.schema import TEXT_DATASETS, Recipe
from metafit.data.base import ClassDataset, TaskFamily, TensorClassDataset
from metafit.data.errors import DatasetError

__all__ = ["Split", "load_split", "class_split", "data_report", "describe_dataset",
           "split_summaries", "split_warnings"]

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
FRACTIONS = (0.6, 0.2, 0.2)


def class_split(num_classes: int, split: Split, seed: int = 0,
                counts: tuple[int, int, int] | list[int] | None = None) -> list[int]:
    """Class ids of ``split``: the classes shuffled with ``Random(seed)``, then the first
    ``counts[0]`` for train, the next ``counts[1]`` for val, the last ``counts[2]`` for
    test (default: the 60/20/20 rule of the module docstring)."""
    if num_classes < 3:
        raise ValueError(f"a train/val/test class split needs >= 3 classes, got {num_classes}")
    order = list(range(num_classes))
    random.Random(seed).shuffle(order)
    if counts is None:
        n_test = max(1, round(FRACTIONS[2] * num_classes))
        n_val = max(1, round(FRACTIONS[1] * num_classes))
        n_train = num_classes - n_val - n_test
    else:
        n_train, n_val, n_test = (int(c) for c in counts)
        if sum(counts) != num_classes or min(counts) < 1:
            raise ValueError(f"class_split {list(counts)} must be three positive counts "
                             f"summing to the {num_classes} classes")
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
              "test": (n_train + n_val, num_classes)}
    lo, hi = bounds[split]
    return sorted(order[lo:hi])


def _split_ids(recipe: Recipe, num_classes: int, split: Split) -> list[int]:
    if not recipe.split_classes:
        return list(range(num_classes))
    return class_split(num_classes, split, recipe.split_seed, recipe.class_split)


def _part(recipe: Recipe, full: Any, split: Split) -> Any:
    """``split`` of ``full`` (a TensorClassDataset or TextCSV): its classes, or under
    ``all_classes`` its examples of every class."""
    if recipe.split_scheme == "all_classes":
        from metafit.data.holdout import holdout_examples

        return full.take(holdout_examples(full.classes, full.counts, split, recipe.split_seed,
                                          recipe.holdout_fraction))
    return full.subset(sorted(i for part in _parts(recipe, split)
                              for i in _split_ids(recipe, len(full.classes), part)))


def _omniglot_split(recipe: Recipe, split: Split) -> str | tuple[Split, ...]:
    """What :class:`~metafit.data.omniglot.Omniglot` takes for ``split``: the name, or
    the tuple of :func:`_parts` when there are several."""
    parts = _parts(recipe, split)
    return parts if len(parts) > 1 else split


def _parts(recipe: Recipe, split: Split) -> tuple[Split, ...]:
    """The splits whose classes make up ``split``: ``("train", "val")`` for the training
    split of a ``train_on_val`` recipe, else ``split`` alone."""
    return ("train", "val") if split == "train" and recipe.train_on_val else (split,)


def _table_path(recipe: Recipe) -> Path:
    """A table recipe's table: ``data_root`` itself (a file or a ``datasets`` directory),
    the ``train`` split of a ``DatasetDict`` directory, or the one ``data_root/train.*``
    table file (``.csv``, ``.jsonl``, ``.ndjson``, ``.parquet``)."""
    from metafit.data.arrow_dir_rows import DATASET_DICT, STATE
    from metafit.data.tables import SUFFIXES

    root = _need_root(recipe)
    if root.is_file() or (root / STATE).is_file():
        return root
    if (root / DATASET_DICT).is_file() and (root / "train" / STATE).is_file():
        return root / "train"
    found = [root / f"train{s}" for s in SUFFIXES if (root / f"train{s}").is_file()]
    if len(found) != 1:
        what = "several" if found else "no"
        raise FileNotFoundError(
            f"data_root '{root}' is a directory with {what} train table "
            f"(train{', train'.join(SUFFIXES)}) and is not a datasets directory; give the "
            "table itself")
    return found[0]


#: How a relative data_root is resolved, said in the errors about a missing one.
ROOT_RULES = ("a relative data_root is taken from the folder of the recipe file that sets "
              "it; in a shipped recipe, from $METAFIT_DATA, else the current directory; on "
              "the command line, from the current directory")


def _need_root(recipe: Recipe) -> Path:
    """``data_root`` as an absolute path (``~`` expanded), checked to exist."""
    if not recipe.data_root:
        raise ValueError(
            f"dataset '{recipe.dataset}' needs data_root=PATH (a directory or file holding it)"
        )
    root = Path(os.path.abspath(Path(recipe.data_root).expanduser()))
    if not root.exists():
        from metafit.config.recipe import written_as

        written = written_as(recipe.data_root)
        given = (f" ({written})" if written else
                 "" if recipe.data_root == str(root) else f" ('{recipe.data_root}')")
        raise FileNotFoundError(f"data_root {root}{given} does not exist ({ROOT_RULES})")
    return root


def load_split(recipe: Recipe, split: Split) -> ClassDataset | TaskFamily:
    """The dataset of one split of ``recipe``'s data."""
    if split not in SPLITS:
        raise ValueError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    kind = recipe.dataset
    if recipe.is_rl:
        raise ValueError(f"dataset '{kind}' is a meta-RL task family: it has no examples "
                         "to load (its tasks are MDPs, metafit.rl)")
    if kind == "sinusoid":
        from metafit.data.sinusoid import Sinusoid

        return Sinusoid()
    if kind == "glyphs":
        from metafit.data.glyphs import Glyphs

        return Glyphs(image_size=recipe.image_size, split=split)
    if kind == "omniglot":
        from metafit.data.omniglot import Omniglot

        return Omniglot(_need_root(recipe), image_size=recipe.image_size,
                        rotations=recipe.rotations, split=_omniglot_split(recipe, split),
                        split_scheme=recipe.split_scheme, seed=recipe.split_seed,
                        holdout=recipe.holdout_fraction, crop=recipe.image_crop)
    if kind == "idx":
        from metafit.data.idx import IDX

        root = _need_root(recipe)
        idx = IDX(root if root.is_dir() else root.parent)
        size = tuple(idx.data.shape[2:])
        if size != (recipe.image_size, recipe.image_size) or recipe.channels != 1:
            raise DatasetError(f"{idx.images_path} holds {size[0]}x{size[1]} greyscale images; "
                               f"the recipe asks for image_size {recipe.image_size} and "
                               f"channels {recipe.channels} (IDX images are not resized)"
                               + (f": set image_size: {size[0]}, channels: 1"
                                  if size[0] == size[1] > 0 else ""))
        return idx
    full: TensorClassDataset
    if kind == "image_folder":
        from metafit.data.image_folder import ImageFolder

        full = ImageFolder(_need_root(recipe), image_size=recipe.image_size,
                           channels=recipe.channels, crop=recipe.image_crop)
        return _part(recipe, full, split)
    if kind == "image_table":
        from metafit.data.image_table import ImageTable

        full = ImageTable(_table_path(recipe), recipe.image_column, recipe.label_column,
                          image_size=recipe.image_size, channels=recipe.channels,
                          absolute_paths=recipe.absolute_image_paths, crop=recipe.image_crop)
        return _part(recipe, full, split)
    if kind in TEXT_DATASETS:
        from metafit.data.text_csv import TextCSV

        text = TextCSV(_table_path(recipe), text_column=recipe.text_column,
                       label_column=recipe.label_column)
        part = _part(recipe, text, split)
        return part.tokenize(recipe.text_model, recipe.max_length)
    raise ValueError(f"unknown dataset '{kind}'")


def _counts_and_summaries(recipe: Recipe) -> list[tuple[dict[str, Any], Tensor | None]]:
    """Each split's summary (see :func:`split_summaries`) and its examples per class
    (None for a task family)."""
    out: list[tuple[dict[str, Any], Tensor | None]] = []
    for split in SPLITS:
        ds = load_split(recipe, split)
        if isinstance(ds, TaskFamily) and not isinstance(ds, ClassDataset):
            out.append(({"split": split, "kind": "task_family", "classes": None,
                         "examples": None, "min_per_class": None, "max_per_class": None,
                         "family": type(ds).__name__}, None))
            continue
        counts = ds.counts
        out.append(({"split": split, "kind": "classes", "classes": len(ds.classes),
                     "examples": len(ds),
                     "min_per_class": int(counts.min()) if len(counts) else 0,
                     "max_per_class": int(counts.max()) if len(counts) else 0,
                     "family": None}, counts))
    return out


def split_summaries(recipe: Recipe) -> list[dict[str, Any]]:
    """One dict per split: ``split``, ``kind`` (``classes`` or ``task_family``), and the
    number of ``classes``, ``examples``, ``min_per_class``, ``max_per_class`` (None for a
    task family) or the ``family``'s class name (None for classes)."""
    return [summary for summary, _ in _counts_and_summaries(recipe)]


def split_warnings(recipe: Recipe, split: Split, counts: Tensor) -> list[str]:
    """What keeps ``split`` (``counts [C]``: examples per class) from giving the recipe's
    episodes: fewer classes than a task's ways, or classes with fewer examples than a task
    takes from each (``shots + queries``; validation and test: the evaluation ones),
    which the sampler never draws, and which may leave too few classes to draw from."""
    train = split == "train"
    ways = recipe.ways if train else recipe.eval_ways
    shots = recipe.shots if train else recipe.eval_shots
    queries = recipe.queries if train else recipe.eval_queries
    need, classes = shots + queries, len(counts)
    if classes < ways:
        return [f"{split}: {classes} class(es), fewer than the {ways} ways of a task: no "
                f"{split} episode can be drawn"]
    short = int((counts < need).sum())
    if not short:
        return []
    what = (f"{split}: {short} of {classes} classes have fewer than shots + queries = "
            f"{shots} + {queries} = {need} examples")
    if classes - short < ways:
        return [f"{what}; only {classes - short} can be drawn, fewer than the {ways} ways of "
                f"a task: no {split} episode can be drawn"]
    return [f"{what} and are never drawn"]


def data_report(recipe: Recipe) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`split_summaries` and every split's :func:`split_warnings`."""
    report = _counts_and_summaries(recipe)
    warnings = [w for summary, counts in report if counts is not None
                for w in split_warnings(recipe, summary["split"], counts)]
    return [summary for summary, _ in report], warnings


def describe_dataset(recipe: Recipe) -> list[str]:
    """Human-readable lines: classes and examples of each split, then any warnings."""
    root = f" ({_need_root(recipe)})" if recipe.data_root else ""
    lines = [f"dataset: {recipe.dataset}{root}"]
    summaries, warnings = data_report(recipe)
    for s in summaries:
        if s["kind"] == "task_family":
            lines.append(f"{s['split']:>5}: task family {s['family']} (tasks generated)")
        else:
            lines.append(f"{s['split']:>5}: {s['classes']} classes, {s['examples']} examples "
                         f"({s['min_per_class']}-{s['max_per_class']} per class)")
    return lines + [f"warning: {w}" for w in warnings]
