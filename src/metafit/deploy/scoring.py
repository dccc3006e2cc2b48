"""Scoring an adapted model on the user's own labelled test set: ``metafit evaluate
MODEL_DIR --test PATH`` and ``metafit evaluate RUN --support S --test T`` (adapt, then
score), and their Python form.

    model = AdaptedModel.load("models/mine")
    report = score_model(model, "my_test.csv")   # or a folder of class folders
    print(report.summary()); report.per_class; report.confusion

The test set is read like a support set (:func:`~metafit.deploy.preprocess.load_support`:
a CSV, JSONL or Parquet table or a ``datasets`` directory with the recipe's columns, or
``TEST/<label>/<image>``); a test label the model
does not know is an error naming it, before any prediction. The model scores the test
set exactly as ``predict`` and the server would (its BatchNorm setting, one input at a time
in effect: predictions depend on the input only for ``batch_norm="support"`` models), in
chunks of :data:`CHUNK` inputs so that a large test set is never decoded at once. The
scores are :func:`~metafit.evaluation.classification.score_probabilities`'.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from metafit.deploy.adapted import AdaptedModel
from metafit.deploy.errors import SupportError
from metafit.deploy.preprocess import load_support
from metafit.evaluation.classification import TestSetReport, score_probabilities

__all__ = ["CHUNK", "read_test_set", "score_inputs", "score_model"]

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
        SupportError: no inputs, lengths that differ, or labels the model does not know
            (all of them named, before any prediction).
    """
    if len(inputs) == 0 or len(inputs) != len(labels):
        raise SupportError(f"{where}: {len(inputs)} inputs and {len(labels)} labels; need "
                           "the same number, at least one")
    index = {name: i for i, name in enumerate(model.label_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:10])
        more = f" ({len(unknown)} in all)" if len(unknown) > 10 else ""
        raise SupportError(f"{where}: label(s) {shown}{more} are not classes of the model "
                           f"({', '.join(model.label_names)})")
    chunks = []
    for start in tqdm(range(0, len(inputs), CHUNK), desc="scoring", unit="chunk",
                      disable=not progress, leave=False):
        chunks.append(model.predict_proba(list(inputs[start:start + CHUNK])))  # [c, N]
    probs = torch.cat(chunks)  # [M, N]
    y = torch.tensor([index[label] for label in labels])  # [M]
    report = score_probabilities(probs, y, model.label_names)
    report.extra["batch_norm"] = model.arch.get("batch_norm", "none")
    log.debug("scored %d examples: %s", len(y), report.summary())
    return report


def score_model(model: AdaptedModel, test_path: str | os.PathLike[str],
                progress: bool = False) -> TestSetReport:
    """Read the test set at ``test_path`` (:func:`read_test_set`) and score ``model`` on it
    (:func:`score_inputs`)."""
    inputs, labels = read_test_set(model, test_path)
    return score_inputs(model, inputs, labels, progress, where=str(test_path))
