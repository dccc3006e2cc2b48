""""None of these": the reject setting of an adapted model (``metafit adapt --reject``).

A classifier adapted to N classes always answers one of them. With a reject setting, the
model also computes a reject score ``s(x)`` for every input (higher = more like the known
classes; the scores of :mod:`metafit.evaluation.openset`) and answers the *unknown label*
instead of a class when ``s(x) < threshold``. The setting is stored in ``model.json``
under ``"reject"``::

    "reject": {"score": "max_prob", "threshold": 0.62, "recall": 0.95, "label": "unknown",
               "fitted": {"how": "held-out folds of the support set", "folds": 3,
                          "held_out": 12, "held_out_recall": 0.9167, ...}}

* ``score``: one of :data:`~metafit.evaluation.openset.REJECT_SCORES`; the default,
  :data:`DEFAULT_REJECT_SCORE`, is set here and nowhere else.
* ``threshold``: inputs scoring below it get ``label``. Fitted as the largest threshold
  that keeps ``recall`` of the *held-out* support scores (each fold of the support set
  scored by the model adapted without it, :mod:`metafit.deploy.calibrate`), or given. A
  support set with one example per class has nothing to hold out: scoring the support
  examples with the model adapted on them would overstate every score (a prototype is
  its own example: cosine 1), and a threshold set on those would reject far more than
  ``1 - recall`` of new in-scope inputs. So no threshold is fitted: ``threshold`` is null,
  the scores are still reported, nothing is rejected, and ``fitted.reason`` says why.
* ``label``: the unknown label's name (default ``"unknown"``), never a class name.

Feature scores (``prototype``, ``nearest``) compare the input's body features with the
support set's: the model computes those from its stored support set with its own body
when loaded (:class:`RejectScorer` holds them as a buffer, which the ONNX export carries),
so a prediction depends on its input only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from metafit.evaluation.openset import (
    FEATURE_SCORES,
    REJECT_SCORES,
    reject_scores,
    score_references,
    threshold_for_recall,
)

__all__ = ["DEFAULT_REJECT_SCORE", "DEFAULT_RECALL", "DEFAULT_UNKNOWN_LABEL",
           "RejectRequest", "RejectSetting", "RejectScorer", "setting_from_scores"]

#: The reject score of ``--reject`` without a name, of the server and of the Python API:
#: chosen on the open-set protocols of benchmarks/openset.py (RESULTS.md, "None of
#: these"): the best score on Omniglot, level with the others on BANKING77, and it needs
#: neither the temperature (which a fit on few held-out folds makes too sharp for
#: ``max_prob``) nor support features.
DEFAULT_REJECT_SCORE = "max_logit"
#: The in-scope recall a threshold is fitted for when none is given.
DEFAULT_RECALL = 0.95
#: The unknown label's name when none is given.
DEFAULT_UNKNOWN_LABEL = "unknown"

_FIELDS = ("score", "threshold", "recall", "label", "fitted")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_score(score: object, where: str) -> str:
    if score not in REJECT_SCORES:
        raise ValueError(f"{where}score must be one of {', '.join(REJECT_SCORES)}; got "
                         f"{score!r}")
    return str(score)


def _check_recall(recall: object, where: str) -> float | None:
    if recall is None:
        return None
    if not _is_number(recall) or not 0.0 < float(recall) <= 1.0:  # type: ignore[arg-type]
        raise ValueError(f"{where}recall must be a number in (0, 1], got {recall!r}")
    return float(recall)  # type: ignore[arg-type]


def _check_threshold(threshold: object, where: str) -> float | None:
    if threshold is None:
        return None
    if not _is_number(threshold) or not math.isfinite(float(threshold)):  # type: ignore[arg-type]
        raise ValueError(f"{where}threshold must be a finite number, got {threshold!r}")
    return float(threshold)  # type: ignore[arg-type]


def _check_label(label: object, classes: list[str] | None, where: str) -> str:
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"{where}label must be a non-empty string, got {label!r}")
    if classes is not None and label in classes:
        raise ValueError(f"{where}label {label!r} is also a class name: the unknown label "
                         "must differ from every class")
    return label


@dataclass(frozen=True)
class RejectRequest:
    """What a user asks for: a reject ``score``, and either a target in-scope ``recall``
    (the threshold is fitted on held-out support folds; default :data:`DEFAULT_RECALL`)
    or a given ``threshold``; ``label``: the unknown label.

    Raises:
        ValueError: an unknown score, both recall and threshold, a recall outside
            (0, 1], a threshold that is not finite, an empty label.
    """

    score: str = DEFAULT_REJECT_SCORE
    recall: float | None = None
    threshold: float | None = None
    label: str = DEFAULT_UNKNOWN_LABEL

    def __post_init__(self) -> None:
        _check_score(self.score, "reject ")
        _check_recall(self.recall, "reject ")
        _check_threshold(self.threshold, "reject ")
        _check_label(self.label, None, "reject ")
        if self.recall is not None and self.threshold is not None:
            raise ValueError("reject: give a target recall or a threshold, not both")

    @property
    def target_recall(self) -> float | None:
        """The recall to fit a threshold for (None: the threshold is given)."""
        if self.threshold is not None:
            return None
        return DEFAULT_RECALL if self.recall is None else self.recall


@dataclass(frozen=True)
class RejectSetting:
    """A model's reject setting, as stored in ``model.json`` (module docstring)."""

    score: str
    threshold: float | None
    recall: float | None
    label: str
    fitted: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: object, classes: list[str] | None = None) -> RejectSetting:
        """The setting stored as ``value`` (``model.json``'s ``"reject"``), checked field
        by field against the model's ``classes``.

        Raises:
            ValueError: not an object with exactly the fields of the setting, or a field
                out of bounds (the message names it: ``model.json: reject.threshold ...``).
        """
        where = "model.json: reject"
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a JSON object")
        missing = [k for k in _FIELDS if k not in value]
        extra = sorted(set(value) - set(_FIELDS))
        if missing or extra:
            raise ValueError(f"{where} must have exactly the fields {', '.join(_FIELDS)}"
                             + (f"; missing {missing}" if missing else "")
                             + (f"; unknown {extra}" if extra else ""))
        if not isinstance(value["fitted"], dict):
            raise ValueError(f"{where}.fitted must be a JSON object")
        return cls(_check_score(value["score"], f"{where}."),
                   _check_threshold(value["threshold"], f"{where}."),
                   _check_recall(value["recall"], f"{where}."),
                   _check_label(value["label"], classes, f"{where}."), dict(value["fitted"]))

    def check(self, classes: list[str]) -> None:
        """Check the setting against a model's ``classes`` (and its own bounds).

        Raises:
            ValueError: as :meth:`from_dict`.
        """
        RejectSetting.from_dict(self.to_dict(), classes)

    def rejects(self, scores: Tensor) -> Tensor:
        """Whether each of the ``scores [M]`` gets the unknown label: ``[M]`` bool (none
        without a threshold)."""
        if self.threshold is None:
            return torch.zeros(scores.shape, dtype=torch.bool)
        return scores < self.threshold


def setting_from_scores(request: RejectRequest, held_out: Tensor | None,
                        fitted: dict[str, Any]) -> RejectSetting:
    """The setting ``request`` asks for, its threshold fitted on the held-out support
    scores ``[H]`` (:func:`~metafit.evaluation.openset.threshold_for_recall` at the
    target recall) or given; ``held_out`` None (nothing held out) leaves a target-recall
    request without a threshold (module docstring). ``fitted``: how the scores were
    obtained (folds, counts), recorded with the held-out recall at the threshold."""
    info = dict(fitted)
    threshold = request.threshold
    target = request.target_recall
    if target is not None:
        if held_out is None or held_out.numel() == 0:
            info.setdefault("how", "none")
            info.setdefault("reason", "one example per class: nothing to hold out, and "
                            "the support examples' own scores overstate new inputs'")
            return RejectSetting(request.score, None, target, request.label, info)
        threshold = threshold_for_recall(held_out, target)
    else:
        info = {"how": "given", **({k: v for k, v in info.items() if k != "how"})}
    if held_out is not None and held_out.numel() > 0:
        assert threshold is not None
        info["held_out_recall"] = round(float((held_out.double() >= threshold)
                                              .double().mean()), 6)
    return RejectSetting(request.score, threshold, target, request.label, info)


class RejectScorer(nn.Module):
    """``(logits [B, N], features [B, F]) -> reject scores [B]`` of one score
    (:func:`~metafit.evaluation.openset.reject_scores`), with the model's temperature and,
    for feature scores, the unit support references ``[R, F]``
    (:func:`~metafit.evaluation.openset.score_references`) as a buffer: plain tensor
    operations that ``torch.onnx.export`` translates.

    Args:
        score: the reject score.
        temperature: the calibration temperature (``max_prob``, ``energy``).
        support_features: ``[S, F]`` (feature scores only).
        support_labels: ``[S]`` (``prototype``).
    """

    def __init__(self, score: str, temperature: float = 1.0,
                 support_features: Tensor | None = None,
                 support_labels: Tensor | None = None) -> None:
        super().__init__()
        self.score = _check_score(score, "reject ")
        self.temperature = float(temperature)
        references = torch.zeros(0, 0)  # [R, F]
        if score in FEATURE_SCORES:
            if support_features is None:
                raise ValueError(f"the {score!r} reject score needs the support set's "
                                 "features (the model has no stored support set)")
            references = score_references(score, support_features, support_labels)
        self.references: Tensor
        self.register_buffer("references", references)

    def forward(self, logits: Tensor, features: Tensor) -> Tensor:
        if self.score in FEATURE_SCORES:  # the nearest of the stored unit references
            return reject_scores("nearest", logits, features=features,
                                 support_features=self.references)  # [B]
        return reject_scores(self.score, logits, self.temperature)  # [B]
