"""Adapting a meta-trained run to a user's own labelled examples.

:class:`Adapter` loads a run's recipe and checkpoint once and adapts it to any number of
support sets (also from several threads at once): validate the support set, preprocess
it exactly like the training data, run the algorithm's own adaptation
(``algo.adapt``, the inner loop of the recipe or ``steps`` steps), and materialise the
adapted learner into a plain module (:mod:`metafit.deploy.materialise`)::

    adapter = Adapter.from_run("runs/omniglot_protonet")
    model = adapter.adapt(["a.png", "b.png", ...], ["alpha", "beta", ...])
    model.predict(["query.png"])   # [{"label": "alpha", "probabilities": {...}}]
    model.save("models/mine")

Labels are arbitrary strings; the sorted distinct names (or the ``classes`` given) are the
classes ``0..N-1``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from metafit.algorithms.base import Algorithm, Learner
from metafit.config.schema import Recipe
from metafit.deploy.adapted import ENCODER, AdaptedModel
from metafit.deploy.errors import SupportError
from metafit.deploy.materialise import BatchNormMode, materialise
from metafit.deploy.preprocess import (
    Preprocessor,
    TextPreprocessor,
    load_support,
    preprocessor_for,
)
from metafit.deploy.reject import RejectRequest
from metafit.execution.threads import share_parameters

log = logging.getLogger(__name__)

__all__ = ["Adapter", "adapt_run", "MIN_SHOTS", "check_labels", "encoder_assets"]

#: Fewest support examples a class may have.
MIN_SHOTS = 1
_TOKENIZER_PREFIXES = ("tokenizer", "vocab", "special_tokens", "added_tokens", "merges",
                       "spiece", "sentencepiece")


def check_labels(labels: Sequence[Any], classes: Sequence[str] | None = None,
                 min_shots: int = MIN_SHOTS, ways: int | None = None) -> list[str]:
    """The class names (``classes``, else the sorted distinct labels) after checking the
    support labels.

    Raises:
        SupportError: no labels, a label that is not a non-empty string, a label not in
            ``classes``, fewer than 2 classes, a class with fewer than ``min_shots``
            examples, or not exactly ``ways`` classes (a model with a fixed head).
    """
    if len(labels) == 0:
        raise SupportError("the support set is empty: give at least one labelled example "
                           f"per class ({min_shots} or more) for 2 or more classes")
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise SupportError(f"example {i}: the label must be a non-empty string, got "
                               f"{label!r}")
    counts = Counter(labels)
    if classes is None:
        names = sorted(counts)
    else:
        names = [str(c) for c in classes]
        if len(set(names)) != len(names):
            raise SupportError(f"classes lists a name twice: {names}")
        unknown = sorted(set(counts) - set(names))
        if unknown:
            raise SupportError(f"unknown label(s) {unknown[:10]}: not among the classes "
                               f"{names[:20]}")
    if len(names) < 2:
        raise SupportError(f"the support set has a single class ({names[0]!r}); a "
                           "classifier needs examples of at least 2 classes")
    few = [f"{n!r} ({counts.get(n, 0)})" for n in names if counts.get(n, 0) < min_shots]
    if few:
        raise SupportError(f"too few examples: class(es) {', '.join(few[:10])} have fewer "
                           f"than {min_shots} example(s)")
    if ways is not None and len(names) != ways:
        raise SupportError(f"the model was meta-trained with a {ways}-way head, so the "
                           f"support set needs exactly {ways} classes; got {len(names)}")
    return names


class _Replicas:
    """Copies of an algorithm sharing its parameters, one per concurrent ``adapt`` call
    (``functional_call`` swaps a module's parameters while it runs, so one module cannot
    serve two threads at once). The source itself is never lent out: a copy made while
    another thread had swapped its parameters would copy that task's tensors."""

    def __init__(self, algo: Algorithm) -> None:
        self._source = algo
        self._free: list[Algorithm] = []
        self._lock = threading.Lock()

    @contextmanager
    def take(self) -> Iterator[Algorithm]:
        with self._lock:
            if self._free:
                algo = self._free.pop()
            else:
                replica = share_parameters(copy.deepcopy(self._source), self._source)
                algo = cast(Algorithm, replica)
        try:
            yield algo
        finally:
            with self._lock:
                self._free.append(algo)


def _encoder_assets(algo: Algorithm, tokenizer_dir: Path) -> tuple[dict[str, bytes], Any]:
    """``encoder/...`` files of a text model (the encoder's config as built, and the
    tokenizer files) and the encoder's config."""
    config = copy.deepcopy(cast(Any, algo.model.body).encoder.config)
    return encoder_assets(config, tokenizer_dir), config


def encoder_assets(config: Any, tokenizer_dir: Path) -> dict[str, bytes]:
    """``encoder/...`` files of a text model directory: the encoder's ``config`` (a
    ``transformers`` config) as ``config.json``, and the tokenizer files of
    ``tokenizer_dir``."""
    assets = {ENCODER + "config.json": config.to_json_string().encode()}
    for f in sorted(tokenizer_dir.iterdir()):
        if f.is_file() and f.name.startswith(_TOKENIZER_PREFIXES) and f.suffix in (
                ".json", ".txt", ".model"):
            assets[ENCODER + f.name] = f.read_bytes()
    return assets


def _image_encoder_assets(recipe: Recipe, algo: Algorithm) -> tuple[dict[str, bytes], Any]:
    """``encoder/...`` files of an image_encoder model (the encoder's config as built, and
    the image processor's config, whose resize and normalisation the body applies) and
    the :class:`~metafit.models.image_encoder.EncoderSpec` that rebuilds the body."""
    from metafit.models.image_encoder import (
        PROCESSOR_FILE,
        EncoderSpec,
        check_image_model_dir,
        read_processing,
    )

    body = cast(Any, algo.model.body)
    config = copy.deepcopy(body.encoder.config)
    _, processor = read_processing(check_image_model_dir(recipe.image_model, weights=False),
                                   body.processing.channels)
    assets = {ENCODER + "config.json": config.to_json_string().encode(),
              ENCODER + PROCESSOR_FILE: json.dumps(processor, indent=1).encode()}
    return assets, EncoderSpec(config, body.processing)


class Adapter:
    """A meta-trained algorithm ready to adapt to support sets.

    Args:
        recipe: the run's recipe.
        algo: the algorithm with its trained weights (put in eval mode).
        source: where it comes from (recorded in adapted models).
        min_shots: fewest examples per class.
    """

    def __init__(self, recipe: Recipe, algo: Algorithm, source: dict[str, Any] | None = None,
                 min_shots: int = MIN_SHOTS) -> None:
        self.recipe = recipe
        self.algo = algo.eval()
        self.source = dict(source or {})
        self.min_shots = int(min_shots)
        self.preprocessor: Preprocessor = preprocessor_for(recipe)
        self.fixed_ways = recipe.ways if type(algo).fixed_head else None
        self._replicas = _Replicas(self.algo)
        self._assets: dict[str, bytes] = {}
        self._text_config: Any = None
        if isinstance(self.preprocessor, TextPreprocessor):
            self._assets, self._text_config = _encoder_assets(algo,
                                                              self.preprocessor.tokenizer_dir)
        elif recipe.model == "image_encoder":
            self._assets, self._text_config = _image_encoder_assets(recipe, algo)

    @classmethod
    def from_run(cls, run: str | os.PathLike[str], which: str = "best",
                 classifier: str | None = None, penalty: float | None = None) -> Adapter:
        """Load ``run``'s recipe and checkpoint ``which`` (``best`` or ``last``);
        ``classifier``, ``penalty``: a test-time classifier and its penalty instead of the
        recipe's (:func:`~metafit.runs.trained.load_trained`), recorded in the source.

        Raises:
            FileNotFoundError: ``run`` is not a run directory.
            CheckpointError: a missing or corrupt checkpoint.
            ValueError: a regression run (nothing to classify).
        """
        from metafit.runs.trained import load_trained

        recipe, algo = load_trained(Path(run), which, classifier=classifier, penalty=penalty)
        source: dict[str, Any] = {"run": str(run), "checkpoint": which}
        if classifier is not None:
            source["classifier"] = classifier
        if penalty is not None:
            source["classifier_penalty"] = penalty
        return cls(recipe, cast(Algorithm, algo), source)

    @property
    def uses_steps(self) -> bool:
        """Whether adaptation takes inner steps: not for ProtoNet (prototypes) nor for a
        logistic head (fitted to convergence, :mod:`metafit.algorithms.heads`)."""
        return (bool(type(self.algo).adapts_with_steps)
                and getattr(self.algo, "classifier", None) != "logistic")

    @property
    def kind(self) -> str:
        """``"text"`` or ``"image"``: what :meth:`adapt` takes."""
        return self.preprocessor.kind

    @contextmanager
    def _adapted(self, x: Tensor, y: Tensor, steps: int | None) -> Iterator[Learner]:
        """The adapted learner, valid while its replica is held (inside the block)."""
        if steps is not None and (not isinstance(steps, int) or steps < 0):
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        with self._replicas.take() as algo:
            with torch.no_grad():
                learner = algo.adapt(x, y, steps=steps)
            yield learner

    def learner(self, x: Tensor, y: Tensor, steps: int | None = None) -> Learner:
        """The algorithm's own adapted learner on preprocessed ``x [S, *x]``, ``y [S]``
        (labels ``0..N-1``): what the run's evaluation scores. It holds its own copy of
        the module, so it can be used while other threads adapt."""
        with self._adapted(x, y, steps) as learner:
            return Learner(copy.deepcopy(learner.module), learner.params)

    def adapt_tensors(self, x: Tensor, y: Tensor, label_names: Sequence[str],
                      steps: int | None = None, batch_norm: BatchNormMode = "support"
                      ) -> AdaptedModel:
        """:meth:`adapt` on preprocessed inputs ``x [S, *x]`` and labels ``y [S]``
        (``0..N-1``, ``label_names[i]`` naming class ``i``)."""
        pad = self.preprocessor.pad_id if isinstance(self.preprocessor, TextPreprocessor) else 0
        with self._adapted(x, y, steps) as learner:
            module, arch = materialise(learner, self.recipe, x, batch_norm, self._text_config,
                                       pad)
        n_steps = self.algo.default_eval_steps if steps is None else steps
        counts = Counter(y.tolist())
        info = {"algorithm": self.recipe.algorithm,
                "steps": n_steps if self.uses_steps else 0,
                "support_size": len(y),
                "examples_per_class": {n: counts[i] for i, n in enumerate(label_names)},
                "source": self.source}
        return AdaptedModel(module, list(label_names), self.recipe, arch, self.preprocessor,
                            info, self._assets, (x, y))

    def adapt(self, inputs: Sequence[Any], labels: Sequence[str], steps: int | None = None,
              classes: Sequence[str] | None = None, batch_norm: BatchNormMode = "support"
              ) -> AdaptedModel:
        """Adapt to the support set ``inputs`` (texts, or images as encoded bytes, paths,
        PIL images or uint8 arrays) with string ``labels``.

        Args:
            steps: inner steps (default: the recipe's evaluation steps); ignored with a
                warning where adaptation has none (:attr:`uses_steps`).
            classes: the class names in order (default: the sorted distinct labels); a
                label outside them is an error, a class without examples too.
            batch_norm: ``"support"`` (freeze the support set's statistics: predictions
                depend on the input only) or ``"batch"`` (the algorithm's transductive
                batch statistics), see :mod:`metafit.deploy.materialise`.

        Raises:
            SupportError: bad labels or inputs (see :func:`check_labels`; undecodable or
                wrongly shaped images, empty texts), naming the label or input.
        """
        if len(inputs) != len(labels):
            raise SupportError(f"{len(inputs)} inputs but {len(labels)} labels")
        if steps is not None and not self.uses_steps:  # the user's count, said once
            how = ("its logistic head is fitted to convergence"
                   if type(self.algo).adapts_with_steps else "it has no inner steps")
            log.warning("steps=%s has no effect on %s: %s", steps, self.recipe.algorithm, how)
        names = check_labels(labels, classes, self.min_shots, self.fixed_ways)
        x = self.preprocessor(list(inputs), SupportError)  # [S, *x]
        index = {n: i for i, n in enumerate(names)}
        y = torch.tensor([index[label] for label in labels], dtype=torch.long)  # [S]
        return self.adapt_tensors(x, y, names, steps, batch_norm)


def adapt_run(run: str | os.PathLike[str], support_path: str | os.PathLike[str],
              out: str | os.PathLike[str] | None, steps: int | None = None,
              which: str = "best",
              classes: Sequence[str] | None = None, batch_norm: BatchNormMode = "support",
              classifier: str | None = None, penalty: float | None = None,
              calibrate: bool = False, absolute_image_paths: bool = False,
              reject: RejectRequest | None = None) -> AdaptedModel:
    """Adapt ``run`` to the support set at ``support_path`` (a table with the recipe's
    text or image column and label column; for image runs also a folder of class folders,
    :func:`load_support`) and save the model directory ``out`` (atomically; None: keep it
    in memory only). Returns the adapted model. ``classifier``, ``penalty``: as in
    :meth:`Adapter.from_run`; ``calibrate``: fit the temperature of its probabilities on
    held-out folds of the support set (:mod:`metafit.deploy.calibrate`);
    ``absolute_image_paths``: trust the table's image paths to name any file; ``reject``:
    a "none of these" setting (:mod:`metafit.deploy.reject`), its threshold fitted on the
    same held-out folds as the calibration."""
    adapter = Adapter.from_run(run, which, classifier, penalty)
    recipe = adapter.recipe
    inputs, labels = load_support(support_path, adapter.kind, recipe.text_column,
                                  recipe.label_column, recipe.image_column,
                                  absolute_image_paths)
    model = adapter.adapt(inputs, labels, steps, classes, batch_norm)
    if calibrate or reject is not None:
        from metafit.deploy.calibrate import fit_on_support

        model = fit_on_support(model, adapter.adapt_tensors, calibrate, reject)
    if out is not None:
        model.save(out)
    return model
