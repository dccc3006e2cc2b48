"""Scoring an adapted model on the user's own labelled test set: ``metafit evaluate
MODEL_DIR --test PATH`` and ``metafit evaluate RUN --support S --test T`` (adapt, then
score), and their Python form.

    model = AdaptedModel.load("models/mine")
    report = score_model(model, "my_test.csv")   # or a folder of class folders
    print(report.summary()); report.per_class; report.confusion

The test set is read like a support set (:func:`~metafit.deploy.preprocess.load_support`:
a CSV, JSONL or Parquet table or a ``datasets`` directory with the recipe's columns, or
``TEST/<label>/<image>``); a test label the model
does not know is an error naming it, before any prediction, unless the model has a reject
setting ("none of these", :mod:`metafit.deploy.reject`): then such rows are
*out-of-scope*, the classification figures cover the in-scope rows, and
:class:`~metafit.evaluation.openset.OpenSetReport` adds the out-of-scope recall at the
stored threshold, the AUROC and the false accepts at 95% in-scope recall. The model scores the test
set exactly as ``predict`` and the server would (its BatchNorm setting, one input at a time
in effect: predictions depend on the input only for ``batch_norm="support"`` models), in
chunks of :data:`CHUNK` inputs so that a large test set is never decoded at once. The
scores are :func:`~metafit.evaluation.classification.score_probabilities`'.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from metafit.deploy.adapted import AdaptedModel
from metafit.deploy.errors import SupportError
from metafit.deploy.preprocess import load_support
from metafit.evaluation.classification import (
    TestSetReport,
    score_probabilities,
    wilson_interval,
)
from metafit.evaluation.openset import score_open_set

__all__ = ["CHUNK", "read_test_set", "score_inputs", "score_model", "score_versions"]

log = logging.getLogger(__name__)

#: Inputs decoded and scored at a time.
CHUNK = 256


def read_test_set(model: AdaptedModel, path: str | os.PathLike[str]
                  ) -> tuple[list[Any], list[str]]:
    """The inputs and string labels of the test set at ``path``, read for ``model``'s kind
    with the columns of the recipe it was adapted from.

    Raises:
        SupportError: the file or folder is missing or malformed (names it and the lines).
    """
    recipe = model.recipe
    return load_support(path, model.kind, recipe.text_column, recipe.label_column,
                        recipe.image_column)


def score_inputs(model: AdaptedModel, inputs: Sequence[Any], labels: Sequence[str],
                 progress: bool = False, where: str = "the test set") -> TestSetReport:
    """Score ``model`` on ``inputs`` with true ``labels`` (class names).

    Raises:
        SupportError: no inputs, lengths that differ, labels the model does not know (all
            of them named, before any prediction) when it has no reject setting, or no
            in-scope row.
    """
    if len(inputs) == 0 or len(inputs) != len(labels):
        raise SupportError(f"{where}: {len(inputs)} inputs and {len(labels)} labels; need "
                           "the same number, at least one")
    index = {name: i for i, name in enumerate(model.label_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown and model.reject is None:
        shown = ", ".join(repr(u) for u in unknown[:10])
        more = f" ({len(unknown)} in all)" if len(unknown) > 10 else ""
        raise SupportError(f"{where}: label(s) {shown}{more} are not classes of the model "
                           f"({', '.join(model.label_names)}); a model adapted with --reject "
                           "scores such rows as out-of-scope")
    if unknown and len(unknown) == len(set(labels)):
        raise SupportError(f"{where}: no row has a label of the model's classes "
                           f"({', '.join(model.label_names)})")
    probs_chunks, score_chunks = [], []
    for start in tqdm(range(0, len(inputs), CHUNK), desc="scoring", unit="chunk",
                      disable=not progress, leave=False):
        x = model.preprocess(list(inputs[start:start + CHUNK]))
        if model.reject is None:
            logits = model.logits(x)  # [c, N]
        else:
            logits, scores = model.logits_and_scores(x)  # [c, N], [c]
            score_chunks.append(scores)
        probs_chunks.append(torch.softmax(logits / model.temperature, dim=-1))
    probs = torch.cat(probs_chunks)  # [M, N]
    known = torch.tensor([label in index for label in labels])  # [M]
    y = torch.tensor([index.get(label, -1) for label in labels])  # [M]
    report = score_probabilities(probs[known], y[known], model.label_names)
    if model.reject is not None and unknown:
        scores = torch.cat(score_chunks)  # [M]
        correct = probs[known].argmax(-1) == y[known]
        report.open_set = score_open_set(model.reject.score, scores[known], scores[~known],
                                         correct, model.reject.threshold).to_dict()
    report.extra["batch_norm"] = model.arch.get("batch_norm", "none")
    log.debug("scored %d examples: %s", len(y), report.summary())
    return report


def score_model(model: AdaptedModel, test_path: str | os.PathLike[str],
                progress: bool = False) -> TestSetReport:
    """Read the test set at ``test_path`` (:func:`read_test_set`) and score ``model`` on it
    (:func:`score_inputs`)."""
    inputs, labels = read_test_set(model, test_path)
    return score_inputs(model, inputs, labels, progress, where=str(test_path))


def score_versions(home: str | os.PathLike[str], test_path: str | os.PathLike[str],
                   versions: Sequence[int] | None = None, progress: bool = False
                   ) -> list[dict[str, Any]]:
    """Score versions of the model directory ``home`` (:mod:`metafit.deploy.versions`;
    ``versions`` None: all) on one test set, one row per version: ``version``,
    ``current``, ``classes``, ``support_size``, ``examples`` (test rows), ``known`` (rows
    of classes the version predicts), ``accuracy`` over every row, rows of classes it
    does not know counting as errors, with its Wilson 95% interval, and the figures of
    :func:`score_inputs` on its known rows (``known_accuracy``, ``macro_f1``, ``ece``).
    An early version that lacks a class added later is thus compared on the same rows.

    Raises:
        ValueError: a version ``home`` does not hold.
        SupportError: a malformed test set; no row of a version's classes.
    """
    from metafit.deploy.versions import current_version, version_numbers

    have = version_numbers(Path(home))
    wanted = have if versions is None else list(versions)
    missing = [n for n in wanted if n not in have]
    if missing:
        raise ValueError(f"{home} has no version(s) {missing} (versions: "
                         f"{', '.join(map(str, have))})")
    now = current_version(Path(home))
    rows: list[dict[str, Any]] = []
    inputs: list[Any] | None = None
    labels: list[str] = []
    for n in wanted:
        model = AdaptedModel.load(home, n)
        if inputs is None:
            inputs, labels = read_test_set(model, test_path)
        keep = [i for i, label in enumerate(labels)
                if label in model.label_names or model.reject is not None]
        report = score_inputs(model, [inputs[i] for i in keep], [labels[i] for i in keep],
                              progress, where=f"{test_path} (version {n})")
        known = sum(label in model.label_names for label in labels)
        correct = round(report.accuracy * report.examples)
        low, high = wilson_interval(correct, len(labels))
        rows.append({"version": n, "current": n == now, "classes": model.label_names,
                     "support_size": model.info.get("support_size"),
                     "examples": len(labels), "known": known,
                     "accuracy": correct / len(labels), "accuracy_low": low,
                     "accuracy_high": high, "known_accuracy": report.accuracy,
                     "macro_f1": report.macro_f1, "ece": report.ece})
    return rows
