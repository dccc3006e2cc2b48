"""Continual updates: add labelled examples to an adapted model and re-adapt it into a new
version (``metafit adapt --update MODEL --support NEW``, ``POST
/v1/adaptations/{id}/examples``).

The new version is adapted from the meta-trained run, exactly as the current version was
(same steps, same BatchNorm setting, :meth:`Adapter.adapt_tensors
<metafit.deploy.adapter.Adapter.adapt_tensors>`), on the union of the current version's
stored support set and the new examples, which may belong to existing classes or to new
ones (appended after the existing classes, sorted, so existing class indices stay). What
the current version had fitted on its support set is fitted again on the union, from one
pass of held-out folds (:func:`metafit.deploy.calibrate.fit_on_support`): the
temperature when it was calibrated, the reject threshold at the same target recall (or
the same given threshold). Versions, the pointer and locking:
:mod:`metafit.deploy.versions`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from metafit.deploy.adapted import AdaptedModel
from metafit.deploy.adapter import Adapter, check_labels
from metafit.deploy.calibrate import fit_on_support
from metafit.deploy.errors import ModelDirError, SupportError
from metafit.deploy.materialise import BatchNormMode
from metafit.deploy.preprocess import load_support
from metafit.deploy.reject import RejectRequest
from metafit.deploy.versions import add_version, current_version, update_lock

__all__ = ["update_model", "update_from_file", "adapter_for", "refit_requests",
           "RunMismatch"]

log = logging.getLogger(__name__)


class RunMismatch(ModelDirError):
    """The run given to update a model is not the one it was adapted from (its recipe, or
    the shape of its inputs, differs)."""


def adapter_for(model: AdaptedModel, run: str | os.PathLike[str] | None = None) -> Adapter:
    """The adapter of the run ``model`` was adapted from: ``run``, else the run recorded
    in ``model.json`` (``adaptation.source``), with the checkpoint and test-time
    classifier recorded there.

    Raises:
        ValueError: no run is recorded and none given, or it no longer exists.
    """
    source = model.info.get("source") or {}
    path = run if run is not None else source.get("run")
    if not path:
        raise ValueError("the model records no run it was adapted from: give the run "
                         "directory (`metafit adapt RUN --update MODEL ...`)")
    if not (Path(path) / "config.yaml").is_file():
        raise ValueError(f"the run {path} the model was adapted from is not there (it is "
                         "needed to adapt again): give its directory "
                         "(`metafit adapt RUN --update MODEL ...`)")
    which = source.get("checkpoint", "best")
    return Adapter.from_run(path, which if which in ("best", "last") else "best",
                            source.get("classifier"), source.get("classifier_penalty"))


def refit_requests(model: AdaptedModel) -> tuple[bool, RejectRequest | None]:
    """What ``model`` fitted on its support set, to fit again on a new one: whether it
    was calibrated, and its reject setting as a request (the same target recall, or the
    same given threshold)."""
    calibrated = "calibration" in model.info
    reject = model.reject
    if reject is None:
        return calibrated, None
    if reject.recall is not None:
        return calibrated, RejectRequest(reject.score, reject.recall, None, reject.label)
    return calibrated, RejectRequest(reject.score, None, reject.threshold, reject.label)


def _union(adapter: Adapter, parent: AdaptedModel, inputs: Sequence[Any],
           labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
    """The parent's support set plus the new examples: ``x [S + M, *x]``, ``y [S + M]``,
    the class names (the parent's, then new ones sorted) and the new class names.

    Raises:
        SupportError: bad new examples, or a union the run cannot adapt to.
    """
    if parent.support is None:
        raise ValueError("the model has no stored support set, so examples cannot be added "
                         "to it: adapt the run again on all the examples")
    if len(inputs) != len(labels):
        raise SupportError(f"{len(inputs)} inputs but {len(labels)} labels")
    if len(labels) == 0:
        raise SupportError("no new examples: give at least one labelled example")
    old_x, old_y = parent.support  # [S, *x], [S]
    added = sorted({str(label) for label in labels} - set(parent.label_names))
    names = [*parent.label_names, *added]
    every = [parent.label_names[i] for i in old_y.tolist()] + list(labels)
    check_labels(every, names, adapter.min_shots, adapter.fixed_ways)
    if parent.reject is not None and parent.reject.label in added:
        raise SupportError(f"the label {parent.reject.label!r} is the model's unknown label "
                           "('none of these'), not a class")
    new_x = adapter.preprocessor(list(inputs), SupportError)  # [M, *x]
    if new_x.shape[1:] != old_x.shape[1:] or new_x.dtype != old_x.dtype:
        raise RunMismatch(f"the stored support set holds inputs of shape "
                            f"{tuple(old_x.shape[1:])}, the run makes "
                            f"{tuple(new_x.shape[1:])}: the run is not the one the model "
                            "was adapted from")
    index = {n: i for i, n in enumerate(names)}
    new_y = torch.tensor([index[str(label)] for label in labels], dtype=old_y.dtype)
    return torch.cat([old_x, new_x]), torch.cat([old_y, new_y]), names, added


def update_model(home: str | os.PathLike[str], inputs: Sequence[Any], labels: Sequence[str],
                 adapter: Adapter | None = None, steps: int | None = None,
                 run: str | os.PathLike[str] | None = None,
                 max_total: int | None = None) -> tuple[int, AdaptedModel]:
    """Add the labelled examples ``inputs``/``labels`` to the current version of the model
    directory ``home``, adapt again on the union (module docstring) and write the result
    as a new version, which becomes current.

    Args:
        adapter: the run's adapter (default: :func:`adapter_for` the current version,
            ``run`` naming the run directory if it has moved).
        steps: inner steps (default: those of the current version).
        max_total: the most examples the new version's support set may hold (checked
            against the current version under the update lock, so concurrent updates
            cannot pass it together).

    Returns:
        The new version's number and its model.

    Raises:
        SupportError: bad examples (names the label or input).
        ModelDirError: ``home`` is missing or corrupt.
        RunMismatch: the run is not the one the model was adapted from.
        ValueError: the run cannot be found; the model has no stored support set.
    """
    home = Path(home)
    with update_lock(home):
        parent_number = current_version(home)
        parent = AdaptedModel.load(home, parent_number)
        if max_total is not None:
            held = int(parent.info.get("support_size") or 0)
            if held + len(labels) > max_total:
                raise SupportError(f"the adaptation holds {held} examples: {len(labels)} "
                                   f"more would pass the limit of {max_total} per adaptation")
        adapter = adapter_for(parent, run) if adapter is None else adapter
        if adapter.recipe != parent.recipe:
            raise RunMismatch(f"{home} was adapted from another run (its recipe differs "
                                "from the run's): add examples with the run it came from")
        x, y, names, added = _union(adapter, parent, inputs, labels)
        if steps is None and adapter.uses_steps:
            steps = parent.info.get("steps")
        batch_norm: BatchNormMode = ("batch" if parent.arch.get("batch_norm") == "batch"
                                     else "support")
        model = adapter.adapt_tensors(x, y, names, steps, batch_norm)
        calibrated, reject = refit_requests(parent)
        if calibrated or reject is not None:
            model = fit_on_support(model, adapter.adapt_tensors, calibrated, reject)
        if any(parent.compression.get(k) for k in ("quantize", "prune", "distill",
                                                     "vocabulary")):
            log.warning("%s version %d was compressed; the new version, adapted from the "
                        "run, is not (compress it again)", home, parent_number)
        model.info["update"] = {"parent": parent_number, "added": len(labels),
                                "new_classes": added,
                                "at": datetime.now(UTC).isoformat(timespec="seconds")}
        number = add_version(home, model)
    log.info("%s: version %d from version %d + %d examples (%d new classes)", home, number,
             parent_number, len(labels), len(added))
    return number, model


def update_from_file(home: str | os.PathLike[str], support_path: str | os.PathLike[str],
                     run: str | os.PathLike[str] | None = None, steps: int | None = None,
                     absolute_image_paths: bool = False) -> tuple[int, AdaptedModel]:
    """:func:`update_model` with the new examples read from ``support_path`` (a table or,
    for images, a folder of class folders, as ``metafit adapt --support``)."""
    home = Path(home)
    parent = AdaptedModel.load(home)
    adapter = adapter_for(parent, run)
    recipe = adapter.recipe
    inputs, labels = load_support(support_path, adapter.kind, recipe.text_column,
                                  recipe.label_column, recipe.image_column,
                                  absolute_image_paths)
    return update_model(home, inputs, labels, adapter, steps)
