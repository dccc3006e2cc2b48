"""ONNX export of an adapted model, verified by running it in onnxruntime (``export``
extra: onnx, onnxruntime, onnxscript).

The module is exported with ``torch.onnx.export(dynamo=True)`` (the ``torch.export``
based exporter, the default since torch 2.9), opset 18, with a dynamic batch axis:

* images: input ``images`` float32 ``[batch, C, S, S]`` (preprocessed as in
  ``model.json``) -> ``logits [batch, N]``;
* text: inputs ``input_ids`` and ``attention_mask`` int64 ``[batch, sequence]`` (dynamic
  sequence length too) -> ``logits [batch, N]``;
* a model with a reject setting ("none of these", :mod:`metafit.deploy.reject`) has a
  second output ``reject_score [batch]`` (its score, computed in the graph from the logits
  and the body features; feature scores carry the support references as a constant):
  an input scoring below ``model.json``'s ``reject.threshold`` gets ``reject.label``.

Probabilities are ``softmax(logits / temperature)``, the model's calibration temperature
(``model.json``: ``temperature``, 1 unless adapted with ``--calibrate``). Before anything
is written, the ONNX model runs in onnxruntime on sample inputs (the stored support set:
one batch, and a single example for the dynamic axes) and its logits are compared with
PyTorch's: the largest absolute difference is reported, and an export whose difference
exceeds ``tolerance`` (1e-4) fails with :class:`ExportError`, leaving no output directory.
int8-quantized PyTorch modules cannot be exported (torch.onnx has no translation of
PyTorch's dynamic quantized linear kernels): export the float model instead, optionally
with ``quantize="int8"``, which writes onnxruntime's dynamic int8 quantization of the
checked float export (``onnxruntime.quantization.quantize_dynamic``: int8 weights of the
matrix products) and reports, without gating, how far its logits are from PyTorch's float
ones.

The output is a model directory (atomic, with a manifest): ``model.onnx`` (one file, the
weights inside: protobuf's 2 GB limit is far above these models), ``model.json``
(labels, preprocessing, input and output names), ``export.json`` (the parity report) and,
for text, ``encoder/`` (the tokenizer files).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from metafit.deploy.adapted import ENCODER, AdaptedModel
from metafit.deploy.compress import is_quantized
from metafit.deploy.errors import ExportError
from metafit.deploy.modeldir import write_model_dir
from metafit.models.text import TextBody
from metafit.models.tokenizer import trim

__all__ = ["ExportReport", "export_graph", "export_onnx", "onnx_session", "onnx_feeds",
           "output_names", "TOLERANCE", "OPSET"]

log = logging.getLogger(__name__)

TOLERANCE = 1e-4
OPSET = 18
SAMPLES = 32


@dataclass
class ExportReport:
    """The parity check of an export: largest absolute differences between onnxruntime's
    and PyTorch's logits and probabilities over the sample batches."""

    path: str
    max_abs_diff: float
    max_prob_diff: float
    tolerance: float
    batches: list[list[int]] = field(default_factory=list)
    opset: int = OPSET
    export_seconds: float = 0.0
    #: ``"int8"`` when the written model is onnxruntime's int8 quantization of the checked
    #: float export; its differences from PyTorch's float logits are reported, not gated.
    quantized: str | None = None
    quantized_max_abs_diff: float | None = None
    quantized_max_prob_diff: float | None = None
    #: with a reject setting: the largest ``reject_score`` difference (gated like logits)
    max_score_diff: float | None = None
    #: with a reject setting and ``quantized``: the int8 model's, reported, not gated
    quantized_max_score_diff: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _TextGraph(nn.Module):
    """``(input_ids [B, L], attention_mask [B, L]) -> logits [B, N]`` of a text model:
    the body's pure encode path (no trim), then the head; with a ``scorer``, also the
    reject scores ``[B]``."""

    def __init__(self, model: nn.Module, scorer: nn.Module | None = None) -> None:
        super().__init__()
        self.body = cast(TextBody, model.body)
        self.head = cast(nn.Module, model.head)
        self.scorer = scorer

    def forward(self, input_ids: Tensor, attention_mask: Tensor
                ) -> Tensor | tuple[Tensor, Tensor]:
        features = self.body.encode(input_ids, attention_mask)  # [B, F]
        logits = self.head(features)  # [B, N]
        if self.scorer is None:
            return logits
        return logits, self.scorer(logits, features)  # [B, N], [B]


class _ScoredGraph(nn.Module):
    """``images [B, *x] -> (logits [B, N], reject scores [B])``: one body pass."""

    def __init__(self, model: nn.Module, scorer: nn.Module) -> None:
        super().__init__()
        self.body = cast(nn.Module, model.body)
        self.head = cast(nn.Module, model.head)
        self.scorer = scorer

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(images)  # [B, F]
        logits = self.head(features)  # [B, N]
        return logits, self.scorer(logits, features)


def _graph_and_inputs(model: AdaptedModel, x: Tensor) -> tuple[nn.Module, tuple[Tensor, ...],
                                                               list[str]]:
    """The module to export, example inputs from ``x [B, *x]`` and the input names."""
    scorer = None if model.reject is None else model.scorer()
    if model.kind == "text":
        pad = int(model.preprocessor.spec()["pad_id"])
        ids = trim(x, pad)  # [B, L']
        return _TextGraph(model.module, scorer), (ids, (ids != pad).long()), [
            "input_ids", "attention_mask"]
    if scorer is not None:
        return _ScoredGraph(model.module, scorer), (x,), ["images"]
    return model.module, (x,), ["images"]


def output_names(model: AdaptedModel) -> list[str]:
    """The ONNX outputs of ``model``'s export: ``logits``, and ``reject_score`` with a
    reject setting."""
    return ["logits"] if model.reject is None else ["logits", "reject_score"]


def onnx_feeds(model_kind: str, x: Tensor, pad_id: int = 0) -> dict[str, np.ndarray]:
    """onnxruntime inputs of preprocessed ``x [B, *x]`` (text: trimmed ids and mask)."""
    if model_kind == "text":
        ids = trim(x, pad_id)  # [B, L']
        return {"input_ids": ids.numpy(), "attention_mask": (ids != pad_id).long().numpy()}
    return {"images": x.numpy()}


def onnx_session(path: str | os.PathLike[str], threads: int | None = None) -> Any:
    """An onnxruntime CPU session of the ONNX file ``path`` (``threads``: intra-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_graph(graph: nn.Module, args: tuple[Tensor, ...], names: list[str], path: Path,
            outputs: list[str]) -> None:
    """Export ``graph`` called on ``args`` to the ONNX file ``path`` (opset ``OPSET``, the
    dynamo exporter) with input ``names`` and ``outputs``; axis 0 of every input is a
    dynamic batch axis, and with two inputs (text) axis 1 a shared dynamic sequence axis.
    The exporter's own logging and warnings are silenced."""
    batch = torch.export.Dim("batch")
    axes: dict[int, Any] = {0: batch}
    if len(args) == 2:  # text: a dynamic sequence axis, shared by ids and mask
        axes[1] = torch.export.Dim("sequence", min=1, max=4096)
    dims = tuple(dict(axes) for _ in args)
    # The exporter logs every optimisation pass (and "torchvision is not installed").
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            torch.onnx.export(graph, args, str(path), input_names=names,
                              output_names=outputs, opset_version=OPSET, dynamo=True,
                              dynamic_shapes=dims, verbose=False, external_data=False)
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _parity(model: AdaptedModel, session: Any, x: Tensor
            ) -> tuple[float, float, list[list[int]], float | None]:
    """Max abs logit, probability and (with a reject setting) reject-score differences
    over the sample batches of ``x``."""
    pad = int(model.preprocessor.spec().get("pad_id", 0))
    logit_diff = prob_diff = 0.0
    score_diff: float | None = None
    shapes = []
    for batch in (x, x[:1]):  # a batch, and one example (other batch and sequence sizes)
        feeds = onnx_feeds(model.kind, batch, pad)
        ran = session.run(output_names(model), feeds)
        if model.reject is None:
            ours = model.logits(batch)  # [B, N]
        else:
            ours, scores = model.logits_and_scores(batch)  # [B, N], [B]
            got = torch.from_numpy(ran[1])  # [B]
            if got.shape != scores.shape:
                raise ExportError(f"the ONNX model returned reject scores of shape "
                                  f"{tuple(got.shape)}, PyTorch {tuple(scores.shape)}")
            score_diff = max(score_diff or 0.0, float((got - scores).abs().max()))
        theirs = torch.from_numpy(ran[0])  # [B, N]
        if theirs.shape != ours.shape:
            raise ExportError(f"the ONNX model returned logits of shape {tuple(theirs.shape)}, "
                              f"PyTorch {tuple(ours.shape)}")
        logit_diff = max(logit_diff, float((theirs - ours).abs().max()))
        prob_diff = max(prob_diff, float((theirs.softmax(-1) - ours.softmax(-1)).abs().max()))
        shapes.append(list(next(iter(feeds.values())).shape))
    return logit_diff, prob_diff, shapes, score_diff


def _quantize_onnx(source: Path, target: Path) -> None:
    """onnxruntime's dynamic int8 quantization of ``source`` (weights of MatMul/Gemm and
    the like int8, activations quantized at run time) into ``target``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing", on the root logger
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def _check_exportable(model: AdaptedModel, samples: Tensor | None) -> Tensor:
    """The inputs of the parity check (``samples``, or the stored support set's first
    :data:`SAMPLES`), after checking that ``model`` can be exported at all."""
    if is_quantized(model.module):
        raise ExportError("int8-quantized PyTorch models cannot be exported to ONNX (torch.onnx "
                          "has no translation of PyTorch's dynamic quantized linear layers); "
                          "export the float model, before `metafit compress --quantize` "
                          "(`metafit export --quantize int8` quantizes the ONNX model with "
                          "onnxruntime instead)")
    if samples is None:
        if model.support is None:
            raise ExportError("no sample inputs for the parity check: the model directory has "
                              "no support.pt; pass samples")
        samples = model.support[0][:SAMPLES]
    return samples


def _quantized(model: AdaptedModel, path: Path, samples: Tensor, quantize: str,
               report: ExportReport) -> Path:
    """onnxruntime's ``quantize`` quantization of the float export at ``path``, written
    beside it; its differences from PyTorch go into ``report``. Returns its path."""
    if quantize != "int8":
        raise ValueError(f"quantize must be 'int8' or None, got {quantize!r}")
    target = path.with_name("model.int8.onnx")
    _quantize_onnx(path, target)
    q_logit, q_prob, _, q_score = _parity(model, onnx_session(target), samples)
    report.quantized = quantize
    report.quantized_max_abs_diff, report.quantized_max_prob_diff = q_logit, q_prob
    report.quantized_max_score_diff = q_score
    return target


def export_onnx(model: AdaptedModel, out: str | os.PathLike[str],
                tolerance: float = TOLERANCE, samples: Tensor | None = None,
                quantize: str | None = None, progress: bool = False) -> ExportReport:
    """Export ``model`` to the ONNX model directory ``out`` after a parity check.

    Args:
        samples: preprocessed inputs ``[B, *x]`` for the check (default: the model's
            stored support set, at most 32 examples).
        quantize: ``"int8"``: after the float export passes its check, write onnxruntime's
            dynamic int8 quantization of it instead, with its differences from PyTorch
            reported (not gated: rounding is the point).
        progress: a bar over the stages (export, parity check, quantization) on stderr.

    Raises:
        ExportError: a quantized model; no sample inputs; an exporter failure; logits that
            differ from PyTorch's by more than ``tolerance`` (nothing is written).
        ImportError: the ``export`` extra is not installed.
    """
    from tqdm.auto import tqdm

    samples = _check_exportable(model, samples)
    graph, args, names = _graph_and_inputs(model, samples)
    bar = tqdm(total=2 + (quantize is not None), desc="export", unit="stage",
               disable=not progress, leave=False)
    with bar, tempfile.TemporaryDirectory(prefix="metafit-onnx-") as work:
        path = Path(work) / "model.onnx"
        start = time.perf_counter()
        bar.set_postfix_str("torch.onnx.export")
        try:
            export_graph(graph, args, names, path, output_names(model))
        except Exception as e:  # any exporter failure, with its reason
            raise ExportError(f"torch.onnx.export failed: {type(e).__name__}: {e}") from e
        seconds = time.perf_counter() - start
        bar.update()
        bar.set_postfix_str("parity in onnxruntime")
        logit_diff, prob_diff, shapes, score_diff = _parity(model, onnx_session(path), samples)
        bar.update()
        report = ExportReport(str(out), logit_diff, prob_diff, tolerance, shapes,
                              export_seconds=round(seconds, 2), max_score_diff=score_diff)
        if not logit_diff <= tolerance:
            raise ExportError(f"ONNX parity check failed: logits differ from PyTorch's by up to "
                              f"{logit_diff:.3g} > {tolerance:g} (probabilities by "
                              f"{prob_diff:.3g}); nothing was written")
        if score_diff is not None and not score_diff <= tolerance:
            raise ExportError(f"ONNX parity check failed: reject scores differ from "
                              f"PyTorch's by up to {score_diff:.3g} > {tolerance:g}; nothing "
                              "was written")
        if quantize is not None:
            bar.set_postfix_str(f"{quantize} quantization")
            path = _quantized(model, path, samples, quantize, report)
            bar.update()
        onnx_bytes = path.read_bytes()
    log.debug("ONNX parity: max abs logit diff %.3g, probability diff %.3g", logit_diff,
             prob_diff)
    spec = {**model.spec(), "runtime": "onnx", "inputs": names, "outputs": output_names(model),
            "temperature": model.temperature,
            "probabilities": "softmax(logits / temperature, axis=-1)",
            "onnx_quantization": quantize}
    files = {"model.onnx": onnx_bytes,
             "model.json": (json.dumps(spec, indent=1) + "\n").encode(),
             "export.json": (json.dumps(report.to_dict(), indent=1) + "\n").encode(),
             **{rel: data for rel, data in model.assets.items() if rel.startswith(ENCODER)}}
    write_model_dir(out, files, "onnx")
    return report
