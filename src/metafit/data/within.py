"""Within-alphabet episodes: Lake et al.'s one-shot protocol on Omniglot.

Lake, Salakhutdinov & Tenenbaum (2015), "Human-level concept learning through
probabilistic program induction" (Science 350(6266)), score one-shot classification
*within* an alphabet: the 20 characters of a trial all come from one alphabet, one
drawer's drawings are the 20 training images and another drawer's the test images. This
is harder than the random-alphabet episodes of the meta-learning papers (Vinyals et al.
2016), where the classes of an episode usually differ in style as well as in shape, and
it is the task on which people score 95.5%.

:func:`within_alphabet` turns an :class:`~metafit.data.omniglot.Omniglot` split into the
dataset and the ``groups`` / ``slots`` of an
:class:`~metafit.data.sampler.EpisodeSampler` that draws such episodes: the group of a
class is its alphabet (its alphabet and rotation when rotations are classes), the slot of
an example its drawer. Rotations are never classes of a validation or test episode here
(a rotated character is not a new character of the alphabet), so those splits keep the
upright characters only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from metafit.data.base import TensorClassDataset

__all__ = ["EPISODE_SCHEMES", "within_alphabet", "sampler_options"]

#: ``episode_scheme`` values: the meta-learning papers' episodes, or Lake et al.'s.
EPISODE_SCHEMES: tuple[str, ...] = ("random", "within_alphabet")

_ROTATED = ("/rot90", "/rot180", "/rot270")


def within_alphabet(dataset: Any, keep_rotations: bool) -> tuple[TensorClassDataset,
                                                                   Tensor, Tensor]:
    """``(dataset, groups [C], slots [E])`` for within-alphabet episodes of ``dataset``.

    Args:
        dataset: an :class:`~metafit.data.omniglot.Omniglot` split (class names
            ``"Alphabet/characterNN[/rotK]"``, ``drawers [E]``).
        keep_rotations: keep rotated characters as classes (training), each rotation of
            an alphabet its own group; ``False`` (evaluation): upright characters only.

    Raises:
        ValueError: a dataset without drawers (not Omniglot).
    """
    drawers = getattr(dataset, "drawers", None)
    if drawers is None:
        raise ValueError("within-alphabet episodes need Omniglot (who drew each image); "
                         f"got {type(dataset).__name__}")
    ids = [c for c, name in enumerate(dataset.classes)
           if keep_rotations or not name.endswith(_ROTATED)]
    if len(ids) != len(dataset.classes):
        drawers = drawers[dataset.rows(ids)]  # [E'], in the subset's order
        dataset = dataset.subset(ids)
    names = [_group_name(name) for name in dataset.classes]
    index = {name: i for i, name in enumerate(sorted(set(names)))}
    groups = torch.tensor([index[name] for name in names], dtype=torch.long)  # [C]
    return dataset, groups, drawers


def _group_name(name: str) -> str:
    """``"Alphabet/characterNN/rot90"`` -> ``"Alphabet/rot90"``; upright: ``"Alphabet"``."""
    parts = name.split("/")
    return parts[0] + ("/" + parts[2] if len(parts) > 2 else "")


def sampler_options(scheme: str, dataset: Any, train: bool
                    ) -> tuple[Any, Tensor | None, Tensor | None]:
    """``(dataset, groups, slots)`` for an :class:`~metafit.data.sampler.EpisodeSampler`
    drawing ``scheme``'s episodes (one of :data:`EPISODE_SCHEMES`): ``dataset`` unchanged
    and no groups or slots for ``"random"``.

    Raises:
        ValueError: an unknown scheme, or the errors of :func:`within_alphabet`.
    """
    if scheme == "random":
        return dataset, None, None
    if scheme != "within_alphabet":
        raise ValueError(f"unknown episode scheme {scheme!r}; use "
                         f"{' or '.join(EPISODE_SCHEMES)}")
    return within_alphabet(dataset, keep_rotations=train)
