"""``metafit ensemble``: trained conv4 ProtoNet runs merged into one run directory.

The merged run's network is the members side by side (``conv_groups``,
:mod:`metafit.models.ensemble`): its logits are the mean of the members' logits, so it
predicts as the ensemble that averages their log-probabilities, and everything that reads
a run (``evaluate``, ``adapt``, ``predict``, ``serve``, ``export``) reads it unchanged, at
``K`` times the cost of one member. The run cannot be trained further (``status.json``
says ``complete`` and names the members).

Members must agree on what decides the inputs and the network
(:data:`metafit.config.ensemble.MUST_AGREE`); the rest of the recipe (the seed, the
training schedule) is the first member's. Each member's checkpoint is read as ``evaluate``
reads it (:func:`~metafit.runs.trained.load_trained`: its digest, then its tensors against
its recipe's architecture), so a forged one is refused before anything is merged.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from metafit.config.ensemble import MAX_MEMBERS, MUST_AGREE, merge_problem
from metafit.config.recipe import Recipe, make_recipe
from metafit.io import fsync_dir, remove_stale_dirs
from metafit.models.ensemble import merge_conv4_states, merge_head_states
from metafit.runs.directory import RunDir, load_checkpoint
from metafit.runs.trained import load_trained

__all__ = ["merge_runs"]

logger = logging.getLogger(__name__)


def merge_runs(runs: Sequence[str | Path], out: str | Path,
               which: Literal["best", "last"] = "best", finished_only: bool = False) -> Recipe:
    """Merge the ``which`` checkpoints of ``runs`` into a new run directory ``out``.

    Args:
        runs: two or more finished or unfinished runs of conv4 ProtoNets with the
            squared Euclidean distance and no test-time classifier
            (:func:`~metafit.config.ensemble.merge_problem`), agreeing on
            :data:`~metafit.config.ensemble.MUST_AGREE`.
        out: a directory that does not exist yet, or is empty.
        which: the members' checkpoint (``best`` or ``last``).
        finished_only: refuse a member whose training has not finished (``status.json``
            not ``complete`` or ``stopped_early``: crashed, killed or still running);
            otherwise such a member merges with a warning naming it.

    Returns:
        The merged run's recipe (``hidden`` and ``conv_groups`` multiplied by the members'
        number).

    Raises:
        ValueError: fewer than 2 or more than ``MAX_MEMBERS`` runs, a member that cannot
            merge, members that disagree (the key named), an ``out`` that holds files, or
            (``finished_only``) a member that has not finished.
        FileNotFoundError: a member is not a run directory.
        CheckpointError: a member's checkpoint is missing, corrupt or of another
            architecture than its recipe's.
    """
    if not 2 <= len(runs) <= MAX_MEMBERS:
        raise ValueError(f"an ensemble merges 2 to {MAX_MEMBERS} runs, got {len(runs)}")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target} exists and is not an empty directory: the merged run "
                         "needs a new one")
    for run in runs:
        rd = RunDir(run)
        if rd.exists() and not rd.is_finished():
            state = rd.status().get("status")
            if finished_only:
                raise ValueError(f"{run}: its training has not finished (status {state!r}): "
                                 "a member crashed, was killed or still runs")
            logger.warning("%s: its training has not finished (status %r); merging its %s "
                           "checkpoint as it is", run, state, which)
    recipes = [RunDir(run).read_recipe() for run in runs]
    first = recipes[0]
    for run, recipe in zip(runs, recipes, strict=True):
        problem = merge_problem(recipe)
        if problem:
            raise ValueError(f"{run}: {problem}")
        differ = [k for k in MUST_AGREE if getattr(recipe, k) != getattr(first, k)]
        if differ:
            key = differ[0]
            raise ValueError(f"{run} has {key}={getattr(recipe, key)!r} where {runs[0]} has "
                             f"{getattr(first, key)!r}: the members must agree on "
                             f"{', '.join(MUST_AGREE)}")
    loaded = [load_trained(run, which, device="cpu")[1] for run in runs]
    states = [algo.state_dict() for algo in loaded]
    groups = first.conv_groups * len(runs)
    state = {**merge_conv4_states(states, first.depth, "model.body."),
             **merge_head_states(states, "model.head.")}
    unknown = sorted(set().union(*states) - set(state))
    if unknown:
        raise ValueError(f"state {unknown[0]} is neither a conv4 block nor the head; this "
                         "network does not merge")
    recipe = make_recipe({**first.model_dump(), "hidden": first.hidden * len(runs),
                          "conv_groups": groups,
                          "description": f"ensemble of {len(runs)} runs ({first.name})"},
                         f"the ensemble of {', '.join(map(str, runs))}")
    payload: dict[str, Any] = {
        "algorithm": state, "recipe": recipe.applicable_dump(),
        "num_train_classes": load_checkpoint(
            RunDir(runs[0]).trained_checkpoint(which)).get("num_train_classes"),
        "ensemble_of": [str(Path(run).resolve()) for run in runs], "member_checkpoint": which}
    # Written beside the target, then renamed into place: an interrupted merge leaves no
    # half a run at --out (a hidden .NAME.XXXX.tmp folder at most) and can be run again.
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_dirs(target.parent, rf"\.{re.escape(target.name)}\.[0-9a-f]{{8}}\.tmp")
    staging = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    staging.mkdir()  # the default permissions, as a run directory's
    try:
        rd = RunDir(staging)
        rd.write_config(recipe)
        for name in ("best", "last"):
            rd.save_checkpoint(name, payload)
        rd.set_status("complete", iteration=0, ensemble_of=payload["ensemble_of"],
                      member_checkpoint=which)
        os.rename(staging, target)  # onto a missing or empty directory only
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%s: the ensemble of %d runs (conv4, %d x %d filters)", target, len(runs),
                len(runs), first.hidden)
    return recipe
