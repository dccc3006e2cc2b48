"""Calibrating an adapted model's confidences on its own support set (``metafit adapt
--calibrate``): cross-validated temperature scaling
(:mod:`metafit.evaluation.calibration`).

The model's stored support set is cut into folds; for each, the run is adapted on the other
folds exactly as the model was (same steps, same BatchNorm setting) and scores the held-out
fold; the temperature fitted on those held-out logits is stored in the model directory
(``model.json``: ``adaptation.temperature`` and ``adaptation.calibration``) and applied by
``predict``, the server and :meth:`AdaptedModel.predict_proba
<metafit.deploy.adapted.AdaptedModel.predict_proba>`. Labels never change.

Cost: one extra adaptation per fold (at most ``folds``, default 10).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from metafit.deploy.adapted import AdaptedModel
from metafit.evaluation.calibration import fit_temperature, nll, support_folds

__all__ = ["Refit", "calibrate"]

#: Adapts the run again: ``(x [S', *x], y [S'], label names, steps, BatchNorm mode) ->``
#: an :class:`AdaptedModel` (``Adapter.adapt_tensors``).
Refit = Callable[[Tensor, Tensor, list[str], Any, Any], AdaptedModel]

log = logging.getLogger(__name__)


def calibrate(model: AdaptedModel, refit: Refit, folds: int = 10) -> AdaptedModel:
    """``model`` with its temperature fitted on held-out folds of its support set, each
    scored by the model ``refit`` adapts on the other folds (``Adapter.adapt_tensors`` of
    the adapter that made ``model``); unchanged (``T = 1``, the reason recorded) when no
    class has two examples.

    Raises:
        ValueError: ``model`` has no stored support set.
    """
    if model.support is None:
        raise ValueError("calibration needs the model's support set (it has none stored)")
    x, y = model.support  # [S, *x], [S]
    steps = model.info.get("steps")
    batch_norm = model.arch.get("batch_norm", "none")
    mode = "batch" if batch_norm == "batch" else "support"
    held_logits, held_labels = [], []
    for fold in support_folds(y, folds):
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[fold] = False
        part = refit(x[keep], y[keep], model.label_names, steps, mode)
        held_logits.append(part.logits(x[fold]))  # [k, N]
        held_labels.append(y[fold])
    info: dict[str, Any] = dict(model.info)
    if not held_logits:
        info["temperature"] = 1.0
        info["calibration"] = {"method": "none", "reason": "one example per class: "
                               "nothing to hold out"}
        log.warning("calibration skipped: every class has one example")
    else:
        logits, labels = torch.cat(held_logits), torch.cat(held_labels)
        t = fit_temperature(logits, labels)
        info["temperature"] = t
        info["calibration"] = {
            "method": "temperature, cross-validated on the support set",
            "folds": len(held_logits), "held_out": len(labels),
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, t)}
        log.info("calibrated: temperature %.3g from %d held-out support examples in %d "
                 "folds (NLL %.3f -> %.3f)", t, len(labels), len(held_logits),
                 info["calibration"]["nll_before"], info["calibration"]["nll_after"])
    return AdaptedModel(model.module, model.label_names, model.recipe, model.arch,
                        model.preprocessor, info, model.assets, model.support,
                        model.compression)
