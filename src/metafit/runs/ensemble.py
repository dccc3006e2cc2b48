"""``metafit ensemble``: trained conv4 ProtoNet runs merged into one run directory.

The merged run's network is the members side by side (``conv_groups``,
:mod:`metafit.models.ensemble`): its logits are the mean of the members' logits, so it
predicts as the ensemble that averages their log-probabilities, and everything that reads
a run (``evaluate``, ``adapt``, ``predict``, ``serve``, ``export``) reads it unchanged, at
``K`` times the cost of one member. The run cannot be trained further (``status.json``
says ``complete`` and names the members).

Members must agree on what decides the inputs and the network (:data:`MUST_AGREE`); the
rest of the recipe (the seed, the training schedule) is the first member's.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metafit.config.recipe import Recipe, make_recipe
from metafit.models.ensemble import merge_conv4_states, merge_head_states
from metafit.runs.directory import RunDir, load_checkpoint

__all__ = ["MUST_AGREE", "merge_runs"]

logger = logging.getLogger(__name__)

#: The recipe keys every member must share: the inputs (data, size, crop), the network,
#: and how it scores (algorithm, distance, evaluation episodes).
MUST_AGREE = ("dataset", "image_size", "channels", "image_crop", "model", "hidden", "depth",
              "strided", "conv_groups", "algorithm", "distance", "classifier",
              "test_ways", "test_shots")
#: The most members one merge takes (each adds a member's cost to every prediction).
MAX_MEMBERS = 16


def merge_runs(runs: Sequence[str | Path], out: str | Path, which: str = "best") -> Recipe:
    """Merge the ``which`` checkpoints of ``runs`` into a new run directory ``out``.

    Args:
        runs: two or more finished or unfinished runs of conv4 ProtoNets with the
            squared Euclidean distance, agreeing on :data:`MUST_AGREE`.
        out: a directory that does not exist yet, or is empty.
        which: the members' checkpoint (``best`` or ``last``).

    Returns:
        The merged run's recipe (``hidden`` and ``conv_groups`` multiplied by the members'
        number).

    Raises:
        ValueError: fewer than 2 or more than :data:`MAX_MEMBERS` runs, a member that is not
            a conv4 ProtoNet with the squared Euclidean distance, members that disagree
            (the key named), or an ``out`` that holds files.
        FileNotFoundError: a member is not a run directory.
        CheckpointError: a member's checkpoint is missing or corrupt.
    """
    if not 2 <= len(runs) <= MAX_MEMBERS:
        raise ValueError(f"an ensemble merges 2 to {MAX_MEMBERS} runs, got {len(runs)}")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target} exists and is not an empty directory: the merged run "
                         "needs a new one")
    recipes = [RunDir(run).read_recipe() for run in runs]
    first = recipes[0]
    for run, recipe in zip(runs, recipes, strict=True):
        if (recipe.model, recipe.algorithm, recipe.distance) != ("conv4", "protonet",
                                                                 "sqeuclidean"):
            raise ValueError(f"{run}: model '{recipe.model}', algorithm '{recipe.algorithm}', "
                             f"distance '{recipe.distance}'; only conv4 ProtoNets with the "
                             "squared Euclidean distance merge into their ensemble")
        differ = [k for k in MUST_AGREE if getattr(recipe, k) != getattr(first, k)]
        if differ:
            key = differ[0]
            raise ValueError(f"{run} has {key}={getattr(recipe, key)!r} where {runs[0]} has "
                             f"{getattr(first, key)!r}: the members must agree on "
                             f"{', '.join(MUST_AGREE)}")
    checkpoints = [load_checkpoint(RunDir(run).trained_checkpoint(which)) for run in runs]
    states = [c["algorithm"] for c in checkpoints]
    groups = first.conv_groups * len(runs)
    state = {**merge_conv4_states(states, first.depth, "model.body."),
             **merge_head_states(states, "model.head.")}
    unknown = sorted(set(states[0]) - set(state))
    if unknown:
        raise ValueError(f"{runs[0]}: state {unknown[0]} is neither a conv4 block nor the "
                         "head; this network does not merge")
    recipe = make_recipe({**first.model_dump(), "hidden": first.hidden * len(runs),
                          "conv_groups": groups,
                          "description": f"ensemble of {len(runs)} runs ({first.name})"},
                         f"the ensemble of {', '.join(map(str, runs))}")
    payload: dict[str, Any] = {
        "algorithm": state, "recipe": recipe.model_dump(),
        "num_train_classes": checkpoints[0].get("num_train_classes"),
        "ensemble_of": [str(Path(run).resolve()) for run in runs], "member_checkpoint": which}
    target.mkdir(parents=True, exist_ok=True)
    rd = RunDir(target)
    rd.write_config(recipe)
    for name in ("best", "last"):
        rd.save_checkpoint(name, payload)
    rd.set_status("complete", iteration=0, ensemble_of=payload["ensemble_of"],
                  member_checkpoint=which)
    logger.info("%s: the ensemble of %d runs (conv4, %d x %d filters)", target, len(runs),
                len(runs), first.hidden)
    return recipe
