"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015, "Human-level concept learning through
probabilistic program induction", Science 350(6266)): 1623 handwritten characters of 50
alphabets, 20 drawers each, 105x105 black-on-white PNGs.

Sources: every one of the official ``images_background.zip`` (30 alphabets),
``images_evaluation.zip`` (20), ``images_background_small1.zip`` / ``_small2.zip`` (5 each)
found in ``root``, or its extracted folder (same name without ``.zip``; the zip wins when
both exist), read in place with :mod:`zipfile`. Layout ``<set>/<Alphabet>/characterNN/
<drawer>.png``. Images are keyed by (alphabet, character, file name), so an image in two
sources (Greek and Latin are in both small sets) is counted once.

Each PNG is decoded once (grayscale, PIL Lanczos resize to ``image_size``) into a uint8
``[num_images, 1, s, s]`` tensor cached by :func:`metafit.io.cached` (keyed on the sources'
size and mtime and on ``image_size``); strokes are inverted to bright on 0. With
``rotations=True`` the 90/180/270-degree rotations of each character (``torch.rot90``
counter-clockwise over H, W; Santoro et al. 2016, "Meta-Learning with Memory-Augmented
Neural Networks") are extra classes, made at construction from the cached decode.
Class names: ``"Alphabet/characterNN"``, ``"Alphabet/characterNN/rot90"`` (``rot180``, ...).

Splits are by alphabet (a character and its rotations go where its alphabet goes):

- ``split_scheme="alphabet"`` (default): sort the alphabet names, shuffle them with
  ``random.Random(seed)``, then take alphabets in that order into ``test`` until it holds
  >= 20% of all characters, then into ``val`` until it holds >= 10%; the rest is
  ``train``. A split that would be empty (fewer than 3 alphabets) raises ``ValueError``.
- ``split_scheme="standard"``: the ``images_evaluation`` alphabets are ``test``; the
  ``images_background`` alphabets are shuffled the same way and taken into ``val`` until
  it holds >= 10% of the background characters, the rest is ``train``. Needs both zips.
- ``split_scheme="vinyals"``: the protocol of the papers' tables (Vinyals et al. 2016,
  Santoro et al. 2016, Finn et al. 2017, Snell et al. 2017): all 1623 characters of both
  official zips, sorted and shuffled with ``random.Random(seed)``; the first 1200 are for
  meta-training (1100 ``train`` and 100 ``val`` here), the remaining 423 are ``test``.
  Splits are by character, so one alphabet spans splits. Needs both full zips.
- ``split_scheme="all_classes"``: every character of every source in every split, its
  drawings divided between them (:mod:`metafit.data.holdout`, ``holdout`` of them held
  out, half for ``val``, half for ``test``); a drawing's rotations go where it goes. For
  the model you deploy: meta-training sees every character, and test scores are about
  new drawings of seen characters, not about unseen ones.
"""


from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from metafit.data.base import TensorClassDataset
from metafit.data.ink_crop import check_crop, crop_key
from metafit.data.omniglot_files import OMNIGLOT_SETS, decode_sources, find_sources, source_key
from metafit.io import cached

__all__ = ["OMNIGLOT_SETS", "Omniglot", "split_alphabets"]

SPLITS: tuple[str, ...] = ("train", "val", "test")
SCHEMES: tuple[str, ...] = ("alphabet", "standard", "vinyals", "all_classes")
#: Characters of the ``vinyals`` protocol's train (+ val) split; the rest are test.
VINYALS_TRAIN, VINYALS_VAL = 1100, 100
_ROTATIONS: tuple[str, ...] = ("", "/rot90", "/rot180", "/rot270")


def split_alphabets(
    counts: dict[str, int], seed: int, quotas: list[tuple[str, float]]
) -> dict[str, list[str]]:
    """Assign alphabets to splits: sort, shuffle with ``random.Random(seed)``, then fill
    each ``(split, fraction)`` of ``quotas`` in turn until it holds ``>= fraction`` of all
    characters (``counts``: characters per alphabet); the remaining alphabets are ``train``.
    """
    order = sorted(counts)
    random.Random(seed).shuffle(order)
    total = sum(counts.values())
    out: dict[str, list[str]] = {}
    i = 0
    for name, fraction in quotas:
        out[name], held = [], 0
        while i < len(order) and held < fraction * total:
            out[name].append(order[i])
            held += counts[order[i]]
            i += 1
    out["train"] = order[i:]
    return {k: sorted(v) for k, v in out.items()}


def _scheme_splits(
    characters: list[str], origins: list[str], scheme: str, seed: int
) -> dict[str, list[str]]:
    """The characters (``"Alphabet/characterNN"``) of each split under ``scheme``."""
    if scheme == "all_classes":
        return {split: sorted(characters) for split in SPLITS}
    if scheme == "vinyals":
        if len(characters) < VINYALS_TRAIN + VINYALS_VAL + 1:
            raise ValueError(f"split_scheme='vinyals' needs the full Omniglot zips (1623 "
                             f"characters); found {len(characters)}")
        order = sorted(characters)
        random.Random(seed).shuffle(order)
        cut = VINYALS_TRAIN + VINYALS_VAL
        return {"train": sorted(order[:VINYALS_TRAIN]),
                "val": sorted(order[VINYALS_TRAIN:cut]), "test": sorted(order[cut:])}
    counts: dict[str, int] = {}
    evaluation: set[str] = set()
    for c, o in zip(characters, origins, strict=True):
        alphabet = c.split("/")[0]
        counts[alphabet] = counts.get(alphabet, 0) + 1
        if "images_evaluation" in o.split("|"):
            evaluation.add(alphabet)
    if scheme == "alphabet":
        alphabets = split_alphabets(counts, seed, [("test", 0.2), ("val", 0.1)])
    else:
        background = {a: n for a, n in counts.items() if a not in evaluation}
        alphabets = {**split_alphabets(background, seed, [("val", 0.1)]),
                     "test": sorted(evaluation)}
    split_of = {a: split for split, names in alphabets.items() for a in names}
    out: dict[str, list[str]] = {split: [] for split in alphabets}
    for c in sorted(characters):
        out[split_of[c.split("/")[0]]].append(c)
    return out



def _drawings(data: torch.Tensor, targets: torch.Tensor, drawers: torch.Tensor,
              characters: list[str], split: str, seed: int, holdout: float
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """``split``'s drawings of every character under ``all_classes`` (``data [N, 1, s, s]``
    grouped by character, ``targets [N]``, ``drawers [N]``), and the characters that keep
    any."""
    from metafit.data.holdout import holdout_examples

    order = torch.argsort(targets, stable=True)  # grouped by character (already, as decoded)
    data, targets, drawers = data[order], targets[order], drawers[order]
    counts = torch.bincount(targets, minlength=len(characters))  # [C]
    index = holdout_examples(characters, counts, split, seed, holdout)  # [n]
    targets = targets[index]
    return data[index], targets, drawers[index], torch.unique(targets).tolist()


class Omniglot(TensorClassDataset):
    """Omniglot characters as classes (see the module docstring for sources and splits).

    Args:
        root: directory holding the official zips or their extracted folders.
        image_size: side of the square images (28 in the few-shot literature).
        rotations: add the 90/180/270-degree rotations of each character as classes.
        split: ``None`` (all classes), ``"train"``, ``"val"`` or ``"test"``, or a tuple of
            them (their classes together, e.g. ``("train", "val")``; not ``all_classes``).
        split_scheme: ``"alphabet"``, ``"standard"``, ``"vinyals"`` or ``"all_classes"``.
        seed: seeds the alphabet (or character, or drawing) shuffle of the split.
        holdout: ``all_classes``: the fraction of each character's drawings held out of
            ``train``, half for ``val``, half for ``test``.
        cache: read/write the decoded images from/to the on-disk cache.
        crop: ``"ink"``: each 105 x 105 drawing cropped to the square around its strokes
            before the resize (:mod:`metafit.data.ink_crop`); ``"none"``: the whole canvas.

    Attributes:
        data: ``uint8 [num_examples, 1, image_size, image_size]``, strokes bright.
        alphabets: the alphabets of this split (sorted); ``alphabet_splits``: the
            ``{"train"|"val"|"test": [alphabet, ...]}`` assignment of the scheme.
        num_characters, num_images: characters and images of this split, unrotated.
        drawers: ``long [num_examples]``, who drew each example (0..19 from the file name
            ``NNNN_DD.png``; -1 for another name): Lake et al.'s within-alphabet episodes
            take the support and the queries from different drawers
            (:mod:`metafit.data.within`).
        sources: the zips/folders read.

    Raises:
        FileNotFoundError: no Omniglot zip or folder in ``root``.
        DatasetError: a corrupt zip, or an image that cannot be decoded (names the file).
        ValueError: an unknown split or scheme; ``"standard"`` without both official zips.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 28,
        rotations: bool = True,
        split: str | tuple[str, ...] | None = None,
        split_scheme: str = "alphabet",
        seed: int = 0,
        cache: bool = True,
        holdout: float = 0.2,
        crop: str = "none",
    ) -> None:
        parts = (split,) if isinstance(split, str) else split
        if parts is not None and (not parts or any(s not in SPLITS for s in parts)):
            raise ValueError(f"unknown split {split!r}; valid: None, {', '.join(SPLITS)} or "
                             "a tuple of them")
        if parts is not None and len(parts) > 1 and split_scheme == "all_classes":
            raise ValueError("split_scheme 'all_classes' puts every class in every split; "
                             f"a union of splits ({split!r}) is for the schemes by class")
        if split_scheme not in SCHEMES:
            raise ValueError(f"unknown split_scheme {split_scheme!r}; valid: {SCHEMES}")
        if not isinstance(image_size, int) or image_size <= 0:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        root = Path(root)
        sources = find_sources(root)
        missing = [f"{n}.zip" for n in OMNIGLOT_SETS[:2] if n not in {s for s, _ in sources}]
        if split is not None and split_scheme in ("standard", "vinyals") and missing:
            raise ValueError(f"split_scheme={split_scheme!r} needs {' and '.join(missing)} "
                             f"in {root}")
        check_crop(crop)
        key = ([f"size={image_size}", "drawers"] + [f"{n}={source_key(p)}" for n, p in sources]
               + crop_key(crop))
        decoded = cached("omniglot", key, lambda: decode_sources(sources, image_size, crop),
                         enabled=cache)
        data, targets = decoded["data"], decoded["targets"]  # [N, 1, s, s], [N]
        drawers = decoded["drawers"]  # [N]
        characters: list[str] = decoded["characters"]
        alphabet_of = [c.split("/")[0] for c in characters]
        self.character_splits = _scheme_splits(characters, decoded["origins"], split_scheme,
                                               seed)
        self.alphabet_splits = {k: sorted({c.split("/")[0] for c in v})
                                for k, v in self.character_splits.items()}
        if split is None:
            keep = list(range(len(characters)))
        else:
            empty = [s for s in SPLITS if not self.alphabet_splits[s]]
            if empty:
                raise ValueError(
                    f"Omniglot {split_scheme!r} split leaves {', '.join(empty)} without "
                    f"alphabets ({len(set(alphabet_of))} alphabets in {root}); use split=None"
                )
            chosen = {c for part in parts for c in self.character_splits[part]}
            keep = [i for i, c in enumerate(characters) if c in chosen]
        if parts is not None and split_scheme == "all_classes":
            data, targets, drawers, keep = _drawings(data, targets, drawers, characters,
                                                     parts[0], seed, holdout)
        remap = torch.full((len(characters),), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        new_targets = remap[targets]  # [N]
        mask = new_targets >= 0
        data, new_targets = data[mask], new_targets[mask]  # [n, 1, s, s], [n]
        drawers = drawers[mask]  # [n]
        names = [characters[i] for i in keep]
        self.root, self.split, self.split_scheme, self.seed = root, split, split_scheme, seed
        self.sources = [str(p) for _, p in sources]
        self.alphabets = sorted({alphabet_of[i] for i in keep})
        self.num_characters, self.num_images = len(keep), int(data.shape[0])
        self.rotations = rotations
        if rotations:
            data = torch.cat([torch.rot90(data, k, dims=(2, 3)) for k in range(4)])
            new_targets = torch.cat([new_targets * 4 + k for k in range(4)])  # [4n]
            drawers = drawers.repeat(4)  # [4n]
            names = [n + r for n in names for r in _ROTATIONS]
        order = torch.argsort(new_targets, stable=True)  # the order the base class keeps
        super().__init__(data[order], new_targets[order], names, invert=True)
        self.drawers = drawers[order]  # [num_examples], aligned with self.data
