"""Fitting an adapted model's confidences and its "none of these" threshold on its own
support set: cross-validated temperature scaling (``metafit adapt --calibrate``,
:mod:`metafit.evaluation.calibration`) and the reject threshold at a target in-scope
recall (``metafit adapt --reject``, :mod:`metafit.deploy.reject`).

Both need predictions the model did not fit: the model's stored support set is cut into
folds (:func:`~metafit.evaluation.calibration.support_folds`); for each, the run is
adapted on the other folds exactly as the model was (same steps, same BatchNorm setting)
and scores the held-out fold (:func:`held_out`). One pass of these refits serves both
fits (:func:`fit_on_support`):

* the temperature fitted on the held-out logits is stored in ``model.json``
  (``adaptation.temperature``, ``adaptation.calibration``) and applied by ``predict``, the
  server and :meth:`AdaptedModel.predict_proba
  <metafit.deploy.adapted.AdaptedModel.predict_proba>`; labels never change;
* the reject threshold keeps the target recall of the held-out reject scores (computed
  with that temperature; a feature score compares each held-out example with the
  features of the folds its model was adapted on), stored in ``model.json``'s
  ``reject``.

Cost: one extra adaptation per fold (at most ``folds``, default 10), whichever is fitted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metafit.deploy.adapted import AdaptedModel
from metafit.deploy.reject import RejectRequest, setting_from_scores
from metafit.evaluation.calibration import fit_temperature, nll, support_folds
from metafit.evaluation.openset import FEATURE_SCORES, reject_scores

__all__ = ["Refit", "Fold", "HeldOut", "held_out", "calibrate", "fit_reject",
           "fit_on_support"]

#: Adapts the run again: ``(x [S', *x], y [S'], label names, steps, BatchNorm mode) ->``
#: an :class:`AdaptedModel` (``Adapter.adapt_tensors``).
Refit = Callable[[Tensor, Tensor, list[str], Any, Any], AdaptedModel]

log = logging.getLogger(__name__)

#: What ``fitted.how`` says of a threshold set on held-out folds.
HELD_OUT = "held-out folds of the support set"


@dataclass
class Fold:
    """One held-out fold, scored by the model adapted on the rest of the support set:
    its ``logits [k, N]`` and true ``labels [k]``; with features, its body features
    ``[k, F]`` and those of the examples that model was adapted on ``[S', F]`` (labels
    ``[S']``)."""

    logits: Tensor
    labels: Tensor
    features: Tensor | None = None
    support_features: Tensor | None = None
    support_labels: Tensor | None = None


@dataclass
class HeldOut:
    """The held-out predictions of a support set (:func:`held_out`); no folds when no
    class has two examples."""

    folds: list[Fold]

    @property
    def count(self) -> int:
        """Held-out examples."""
        return sum(len(f.labels) for f in self.folds)

    @property
    def logits(self) -> Tensor:
        """``[H, N]``."""
        return torch.cat([f.logits for f in self.folds])

    @property
    def labels(self) -> Tensor:
        """``[H]``."""
        return torch.cat([f.labels for f in self.folds])

    def scores(self, score: str, temperature: float) -> Tensor:
        """The held-out reject scores ``[H]`` of ``score`` at ``temperature``.

        Raises:
            ValueError: a feature score, and the folds were scored without features.
        """
        if score in FEATURE_SCORES and any(f.features is None for f in self.folds):
            raise ValueError(f"the {score!r} reject score needs held-out features: "
                             "call held_out(..., features=True)")
        return torch.cat([reject_scores(score, f.logits, temperature, f.features,
                                        f.support_features, f.support_labels)
                          for f in self.folds]) if self.folds else torch.zeros(0)


def held_out(model: AdaptedModel, refit: Refit, folds: int = 10,
             features: bool = False) -> HeldOut:
    """Each fold of ``model``'s support set scored by the model ``refit`` adapts on the
    other folds (``Adapter.adapt_tensors`` of the adapter that made ``model``), with body
    features when ``features`` (feature reject scores need them).

    Raises:
        ValueError: ``model`` has no stored support set.
    """
    if model.support is None:
        raise ValueError("fitting on the support set needs the model's support set (it has "
                         "none stored)")
    x, y = model.support  # [S, *x], [S]
    steps = model.info.get("steps")
    mode = "batch" if model.arch.get("batch_norm", "none") == "batch" else "support"
    out = []
    for fold in support_folds(y, folds):
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[fold] = False
        part = refit(x[keep], y[keep], model.label_names, steps, mode)
        if features:
            out.append(Fold(part.logits(x[fold]), y[fold], part.features(x[fold]),
                            part.features(x[keep]), y[keep]))
        else:
            out.append(Fold(part.logits(x[fold]), y[fold]))  # [k, N], [k]
    return HeldOut(out)


def calibrate(model: AdaptedModel, refit: Refit, folds: int = 10,
              held: HeldOut | None = None) -> AdaptedModel:
    """``model`` with its temperature fitted on held-out folds of its support set
    (:func:`held_out`, or ``held`` when already computed); unchanged (``T = 1``, the
    reason recorded) when no class has two examples.

    Raises:
        ValueError: ``model`` has no stored support set.
    """
    held = held_out(model, refit, folds) if held is None else held
    info: dict[str, Any] = dict(model.info)
    if not held.folds:
        info["temperature"] = 1.0
        info["calibration"] = {"method": "none", "reason": "one example per class: "
                               "nothing to hold out"}
        log.warning("calibration skipped: every class has one example")
    else:
        logits, labels = held.logits, held.labels
        t = fit_temperature(logits, labels)
        info["temperature"] = t
        info["calibration"] = {
            "method": "temperature, cross-validated on the support set",
            "folds": len(held.folds), "held_out": len(labels),
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, t)}
        log.info("calibrated: temperature %.3g from %d held-out support examples in %d "
                 "folds (NLL %.3f -> %.3f)", t, len(labels), len(held.folds),
                 info["calibration"]["nll_before"], info["calibration"]["nll_after"])
    return model.derived(info=info)


def fit_reject(model: AdaptedModel, refit: Refit, request: RejectRequest,
               folds: int = 10, held: HeldOut | None = None) -> AdaptedModel:
    """``model`` with the reject setting ``request`` asks for: its threshold fitted at
    the target recall on the held-out reject scores (:func:`held_out`, or ``held``), or
    given (then the held-out recall at it is recorded when ``held`` is). With nothing to
    hold out (one example per class), a target recall leaves the threshold null
    (:mod:`metafit.deploy.reject`), with a warning.

    Raises:
        ValueError: ``model`` has no stored support set; the unknown label is a class name.
    """
    if request.label in model.label_names:
        raise ValueError(f"reject label {request.label!r} is also a class name: choose "
                         "another unknown label")
    if held is None and request.target_recall is not None:
        held = held_out(model, refit, folds, features=request.score in FEATURE_SCORES)
    scores = fitted = None
    if held is not None and held.folds:
        scores = held.scores(request.score, model.temperature)  # [H]
        fitted = {"how": HELD_OUT, "folds": len(held.folds), "held_out": held.count,
                  "temperature": model.temperature}
    setting = setting_from_scores(request, scores, fitted or {})
    if setting.threshold is None:
        log.warning("reject: every class has one example, so no threshold was fitted "
                    "(nothing rejected; the scores are reported): give a threshold "
                    "(--reject-threshold) or two or more examples per class")
    else:
        log.info("reject: %s below %.4g gets %r (%s)", setting.score, setting.threshold,
                 setting.label, setting.fitted.get("how"))
    return model.derived(reject=setting)


def fit_on_support(model: AdaptedModel, refit: Refit, calibrate_temperature: bool = False,
                   reject: RejectRequest | None = None, folds: int = 10) -> AdaptedModel:
    """``model`` calibrated (``calibrate_temperature``) and given the reject setting
    ``reject`` asks for, from one pass of fold refits (:func:`held_out`) shared by both;
    no refits when neither needs them (a given threshold, no calibration)."""
    needs = calibrate_temperature or (reject is not None and reject.target_recall is not None)
    held = None
    if needs:
        held = held_out(model, refit, folds, features=reject is not None
                        and reject.score in FEATURE_SCORES)
    if calibrate_temperature:
        model = calibrate(model, refit, folds, held)
    if reject is not None:
        model = fit_reject(model, refit, reject, folds, held)
    return model
