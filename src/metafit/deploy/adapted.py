"""An adapted model: a plain module, its label names and its preprocessing; predicts,
saves itself as a model directory and loads back from one.

A model directory (written atomically, :mod:`metafit.deploy.modeldir`)::

    MODEL_DIR/
      manifest.json   format, version, library version, size + sha256 of every file (last)
      model.json      kind, label names, architecture, preprocessing, how it was adapted,
                      compression, the reject setting ("none of these", or null:
                      :mod:`metafit.deploy.reject`)
      weights.safetensors  the module's state_dict (:mod:`metafit.deploy.weights`)
      recipe.yaml     the run's recipe and the library version
      support.safetensors  the preprocessed support set {"x": [S, *x], "y": [S]} (export
                      parity checks and compression use it)
      encoder/        text models: the encoder's config.json and tokenizer files;
                      image_encoder: its config.json and preprocessor_config.json
      versions/, current  after updates: later versions and the one that loads
                      (:mod:`metafit.deploy.versions`)

The module is rebuilt from ``recipe.yaml`` + ``model.json`` (+ ``encoder/config.json``)
and the weights alone: neither the run directory nor the pretrained encoder is needed.
Nothing in the directory is unpickled or executed: weights are safetensors, the rest JSON
and YAML (``yaml.safe_load``), and the tokenizer is read from a private copy of the
verified ``encoder/`` files only. Directories of format 1 (``weights.pt``/``support.pt``,
written by metafit before safetensors) are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metafit._version import __version__
from metafit.config.schema import Recipe, recipe_to_yaml
from metafit.deploy.errors import InputError, ModelDirError
from metafit.deploy.modeldir import resolve, write_model_dir
from metafit.deploy.preprocess import Preprocessor
from metafit.deploy.reading import CONTENT, ENCODER, read_adapted
from metafit.deploy.reject import RejectScorer, RejectSetting
from metafit.deploy.versions import current_dir, version_dir, version_numbers
from metafit.deploy.weights import save_tensors
from metafit.evaluation.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE
from metafit.evaluation.openset import FEATURE_SCORES
from metafit.models.base import FewShotModel

__all__ = ["AdaptedModel", "Prediction", "ENCODER"]

Prediction = dict[str, Any]
"""``{"label": str, "probabilities": {label name: float}}``; with a reject setting also
``"score": float`` (the reject score) and ``"rejected": bool`` (``label`` is then the
unknown label)."""


class AdaptedModel:
    """A model adapted to one labelled support set.

    Args:
        module: the plain adapted module (:func:`metafit.deploy.materialise.materialise`),
            ``x [B, *x] -> logits [B, N]``.
        label_names: the N class names; logit ``i`` is ``label_names[i]``.
        recipe: the run's recipe (architecture and preprocessing).
        arch: the architecture (head, ways, features, batch_norm).
        preprocessor: inputs -> model tensors.
        info: how it was adapted (algorithm, steps, support counts, source run, ...;
            ``temperature``: the calibration of :mod:`metafit.deploy.calibrate`, 1 when
            absent).
        assets: extra files of the directory (text: ``encoder/...``), path -> bytes.
        support: the preprocessed support set ``(x [S, *x], y [S])``, or None.
        compression: ``{"quantize": "int8" | None, "prune": {...} | None}``.
        reject: the "none of these" setting (:mod:`metafit.deploy.reject`), or None.

    Raises:
        ValueError: label names that do not fit the head, a temperature out of range, a
            reject setting out of bounds, whose label is a class name, or with a feature
            score but no stored support set.
    """

    def __init__(self, module: FewShotModel, label_names: list[str], recipe: Recipe,
                 arch: dict[str, Any], preprocessor: Preprocessor, info: dict[str, Any],
                 assets: dict[str, bytes] | None = None,
                 support: tuple[Tensor, Tensor] | None = None,
                 compression: dict[str, Any] | None = None,
                 reject: RejectSetting | None = None) -> None:
        if len(label_names) != int(arch["ways"]):
            raise ValueError(f"{len(label_names)} label names for a {arch['ways']}-way model")
        self.module = module.eval()
        self.label_names = list(label_names)
        self.recipe = recipe
        self.arch = dict(arch)
        self.preprocessor = preprocessor
        self.info = dict(info)
        self.assets = dict(assets or {})
        self.support = support
        self.compression = dict(compression or {"quantize": None, "prune": None})
        t = self.info.get("temperature", 1.0)
        if (not isinstance(t, int | float) or isinstance(t, bool) or not math.isfinite(t)
                or not MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
            raise ValueError(f"model.json: adaptation.temperature must be a number in "
                             f"[{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], got {t!r}")
        if reject is not None:
            reject.check(self.label_names)
            if reject.score in FEATURE_SCORES and support is None:
                raise ValueError(f"model.json: reject.score {reject.score!r} compares "
                                 "inputs with the support set, and the model has none "
                                 "stored")
        self.reject = reject
        self._scorer: RejectScorer | None = None

    def derived(self, **changes: Any) -> AdaptedModel:
        """A copy of this model with some constructor arguments replaced (``module``,
        ``info``, ``compression``, ``reject``, ...); the rest are shared."""
        args: dict[str, Any] = {
            "module": self.module, "label_names": self.label_names, "recipe": self.recipe,
            "arch": self.arch, "preprocessor": self.preprocessor, "info": self.info,
            "assets": self.assets, "support": self.support, "compression": self.compression,
            "reject": self.reject}
        unknown = sorted(set(changes) - set(args))
        if unknown:
            raise TypeError(f"AdaptedModel has no argument(s) {unknown}")
        return AdaptedModel(**{**args, **changes})

    @property
    def temperature(self) -> float:
        """The calibration temperature ``T``: probabilities are ``softmax(logits / T)``."""
        return float(self.info.get("temperature", 1.0))

    @property
    def kind(self) -> str:
        """``"text"`` or ``"image"``."""
        return self.preprocessor.kind

    def __repr__(self) -> str:
        return (f"AdaptedModel({self.kind}, {self.info.get('algorithm')}, "
                f"{len(self.label_names)} classes)")

    # -- prediction -------------------------------------------------------------------
    def preprocess(self, inputs: Any) -> Tensor:
        """Texts or images -> model inputs ``[M, *x]`` (:mod:`metafit.deploy.preprocess`).

        Raises:
            InputError: bad inputs (message names the input).
        """
        if isinstance(inputs, str | bytes):
            raise InputError("inputs must be a sequence of texts or images, not a single "
                             f"{type(inputs).__name__}")
        return self.preprocessor(list(inputs))

    @torch.no_grad()
    def logits(self, x: Tensor, batch: int = 256) -> Tensor:
        """Logits ``[M, N]`` of model inputs ``x [M, *x]``, in batches of ``batch`` (one
        batch with ``batch_norm="batch"``, whose outputs depend on the batch; one input at
        a time for an int8 model, see :meth:`_batches`)."""
        return torch.cat([self.module(part) for part in self._batches(x, batch)])

    def _batches(self, x: Tensor, batch: int) -> list[Tensor]:
        """``x [M, *x]`` cut into batches of ``batch`` rows, or one batch with
        ``batch_norm="batch"`` (outputs then depend on the batch). An int8 model takes one
        input at a time: dynamic quantization scales a layer's input by the range of the
        whole batch, so batched, an input's probabilities would move with its neighbours
        (by up to 0.23 on a BANKING77 model) and its answer would depend on them."""
        if self.arch.get("batch_norm") == "batch":
            batch = max(len(x), 1)
        elif self.compression.get("quantize") and self._quantized():
            batch = 1
        return [x[i:i + batch] for i in range(0, len(x), batch)]

    def _quantized(self) -> bool:
        """Whether the module holds a dynamically quantized layer (a conv4 without linear
        layers stays float when quantized)."""
        from metafit.deploy.quantize import is_quantized

        return is_quantized(self.module)

    @torch.no_grad()
    def features(self, x: Tensor, batch: int = 256) -> Tensor:
        """Body features ``[M, F]`` of model inputs ``x [M, *x]``, batched as
        :meth:`logits`."""
        return torch.cat([self.module.body(part) for part in self._batches(x, batch)])

    def scorer(self) -> RejectScorer:
        """The reject score of :attr:`reject` as a module ``(logits, features) -> [B]``,
        its support references computed once from the stored support set.

        Raises:
            ValueError: the model has no reject setting.
        """
        if self.reject is None:
            raise ValueError("the model has no reject setting (adapt with --reject)")
        if self._scorer is None:
            support = self.support
            feats = labels = None
            if support is not None and self.reject.score in FEATURE_SCORES:
                feats, labels = self.features(support[0]), support[1]  # [S, F], [S]
            self._scorer = RejectScorer(self.reject.score, self.temperature, feats, labels)
        return self._scorer

    @torch.no_grad()
    def logits_and_scores(self, x: Tensor, batch: int = 256) -> tuple[Tensor, Tensor]:
        """Logits ``[M, N]`` and reject scores ``[M]`` of model inputs ``x [M, *x]`` (one
        body pass; batched as :meth:`logits`).

        Raises:
            ValueError: the model has no reject setting.
        """
        scorer = self.scorer()
        logits, scores = [], []
        for part in self._batches(x, batch):
            features = self.module.body(part)  # [b, F]
            logits.append(self.module.head(features))  # [b, N]
            scores.append(scorer(logits[-1], features))  # [b]
        return torch.cat(logits), torch.cat(scores)

    def reject_scores(self, inputs: Any) -> Tensor:
        """Reject scores ``[M]`` of M texts or images (higher = more like the known
        classes; :attr:`reject`'s score)."""
        return self.logits_and_scores(self.preprocess(inputs))[1]

    def predict_proba(self, inputs: Any) -> Tensor:
        """Class probabilities ``[M, N]`` (``softmax(logits / T)``, :attr:`temperature`)
        of M texts or images."""
        logits = self.logits(self.preprocess(inputs))  # [M, N]
        return torch.softmax(logits / self.temperature, dim=-1)

    def predict(self, inputs: Any) -> list[Prediction]:
        """One ``{"label", "probabilities"}`` per input (the most probable label); with a
        reject setting also ``"score"`` and ``"rejected"``, and the unknown label for an
        input scoring below the threshold."""
        x = self.preprocess(inputs)
        if self.reject is None:
            logits, scores = self.logits(x), None
        else:
            logits, scores = self.logits_and_scores(x)  # [M, N], [M]
        probs = torch.softmax(logits / self.temperature, dim=-1)  # [M, N]
        out: list[Prediction] = []
        for row in probs.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append({"label": self.label_names[best],
                        "probabilities": dict(zip(self.label_names, row, strict=True))})
        if self.reject is not None and scores is not None:
            for p, score, rejected in zip(out, scores.tolist(),
                                          self.reject.rejects(scores).tolist(), strict=True):
                p.update(score=score, rejected=rejected)
                if rejected:
                    p["label"] = self.reject.label
        return out

    # -- persistence ------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """The content of ``model.json``. An image encoder's own preprocessing (resize,
        crop, normalisation: part of the module, so of its ONNX export too) is described
        under ``preprocessing.in_model``."""
        preprocessing = self.preprocessor.spec()
        processing = getattr(self.module.body, "processing", None)
        if processing is not None:
            preprocessing["in_model"] = {**processing.to_dict(),
                                         "processor": ENCODER + "preprocessor_config.json"}
        return {"kind": self.kind, "labels": self.label_names, "architecture": self.arch,
                "preprocessing": preprocessing, "adaptation": self.info,
                "compression": self.compression,
                "reject": None if self.reject is None else self.reject.to_dict(),
                "metafit_version": __version__}

    def files(self) -> dict[str, bytes]:
        """Every file of the model directory but the manifest: path -> bytes."""
        files = {
            "model.json": (json.dumps(self.spec(), indent=1) + "\n").encode(),
            "recipe.yaml": recipe_to_yaml(self.recipe, metafit_version=__version__).encode(),
            "weights.safetensors": save_tensors(self.module.state_dict()),
            **self.assets,
        }
        if self.support is not None:
            files["support.safetensors"] = save_tensors({"x": self.support[0],
                                                         "y": self.support[1]})
        return files

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model directory ``path`` atomically (a temporary directory beside it,
        fsynced, then renamed; an existing model directory there is replaced in one step).

        Raises:
            ModelDirError: ``path`` is a file or a non-empty directory that is no model
                directory (never replaced).
        """
        return write_model_dir(path, self.files(), CONTENT)

    @classmethod
    def load(cls, path: str | os.PathLike[str], version: int | None = None) -> AdaptedModel:
        """Read a model directory written by :meth:`save`: its current version when it
        has been updated (:mod:`metafit.deploy.versions`; a directory never updated is
        its own version 1), or version ``version``.

        Raises:
            ModelDirError: a missing, incomplete or corrupt directory (no manifest, a file
                missing or failing its checksum, an unknown format version, weights that do
                not fit the stored architecture).
        """
        root = resolve(path)
        if version is None:
            return cls(**read_adapted(current_dir(root)))
        if version not in version_numbers(root):
            raise ModelDirError(f"{root} has no version {version}")
        return cls(**read_adapted(version_dir(root, version)))

