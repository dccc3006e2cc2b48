"""From an adapted :class:`~metafit.algorithms.base.Learner` (a shared module used
functionally with its own parameter dict) to a plain, self-contained ``nn.Module`` that can
be saved as a ``state_dict``, rebuilt from a small JSON architecture, quantized, pruned and
exported to ONNX.

The module is a :class:`~metafit.models.base.FewShotModel` with the training body and

* a linear head ``[B, F] -> [B, N]`` (MAML, FOMAML, Meta-SGD, ANIL, Reptile, FineTune,
  linear_probe),
* the :class:`~metafit.algorithms.heads.LogisticHead` of ``classifier="logistic"`` (a
  linear layer on the L2-normalised features; ProtoNet, FineTune, linear_probe), or
* ProtoNet's :class:`~metafit.algorithms.protonet.PrototypeHead` (logits
  ``-||f - p_c||^2`` with the prototypes ``[N, F]`` as a buffer): the algorithm's own
  logits, so its probabilities are reproduced exactly rather than up to rounding.

Two rewrites make it deployable:

* **LoRA merged** (text, ``adapt=lora``): each adapted projection becomes a plain linear
  layer with ``W + scaling * B @ A`` (Hu et al. 2021, sec. 4.1), so the model is the
  encoder's own architecture and needs no ``peft``.
* **BatchNorm statistics frozen** (``batch_norm="support"``): the backbones normalise with
  the statistics of the batch they see (per-task batch statistics, as MAML does), so a
  query's prediction would depend on the other queries of its batch, and a single image
  would be normalised by itself. A deployed model instead normalises with the statistics of
  the *support set* at each BatchNorm layer (mean and biased variance, as training mode
  uses them), stored as running statistics in eval mode: the support set's own outputs are
  unchanged, and a prediction depends on its input only. ``batch_norm="batch"`` keeps the
  transductive behaviour of the algorithm's evaluation (predictions then depend on the
  batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from metafit.algorithms.base import Learner
from metafit.algorithms.heads import LogisticHead
from metafit.algorithms.protonet import PrototypeHead
from metafit.config.schema import Recipe
from metafit.models.base import FewShotModel

__all__ = ["BatchNormMode", "architecture", "build_module", "check_vocabulary_spec",
           "encoder_config", "MAX_VOCABULARY",
           "freeze_batch_norm", "learner_state", "lora_scalings", "materialise", "merge_lora"]

BatchNormMode = Literal["support", "batch"]
_LORA_A, _LORA_B, _BASE = ".lora_A.default.weight", ".lora_B.default.weight", ".base_layer."


def lora_scalings(module: nn.Module) -> dict[str, float]:
    """``{module name: scaling}`` of every LoRA layer (``peft``) in ``module``."""
    out: dict[str, float] = {}
    for name, m in module.named_modules():
        scaling = getattr(m, "scaling", None)
        if hasattr(m, "lora_A") and isinstance(scaling, dict) and "default" in scaling:
            out[name] = float(scaling["default"])
    return out


def merge_lora(state: Mapping[str, Tensor], scalings: Mapping[str, float]) -> dict[str, Tensor]:
    """``state`` with every LoRA layer merged: ``X.base_layer.weight`` +
    ``scaling * X.lora_B @ X.lora_A`` becomes ``X.weight`` (``X.base_layer.bias`` becomes
    ``X.bias``); the adapter tensors are dropped. ``scalings``: :func:`lora_scalings`."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith((_LORA_A, _LORA_B)):
            continue
        if _BASE in key:
            prefix = key.split(_BASE)[0]
            if key.endswith(_BASE + "weight") and prefix + _LORA_A in state:
                a, b = state[prefix + _LORA_A], state[prefix + _LORA_B]  # [r, in], [out, r]
                value = value + scalings[prefix] * (b @ a)  # [out, in]
            key = key.replace(_BASE, ".")
        out[key] = value
    return out


def learner_state(learner: Learner) -> dict[str, Tensor]:
    """Every tensor of the adapted model (the learner's parameters over its module's own
    state), LoRA merged, detached copies."""
    state = {**learner.module.state_dict(), **learner.params}
    meta = sorted(n for n, t in state.items() if t.is_meta)
    if meta:
        raise ValueError(f"the learner leaves {meta[:5]} without values")
    state = {n: t.detach().clone() for n, t in state.items()}
    scalings = lora_scalings(learner.module)
    return merge_lora(state, scalings) if scalings else state


def architecture(learner: Learner, batch_norm: BatchNormMode) -> dict[str, Any]:
    """The JSON architecture of the adapted model: head type, ways, feature width, and the
    BatchNorm mode (``"none"`` for models without BatchNorm)."""
    head = learner.module.head
    extra: dict[str, Any] = {}
    if isinstance(head, PrototypeHead):
        ways, features = head.prototypes.shape
        kind = "prototypes"
        extra = {"distance": head.distance, "scale": head.scale}
    else:
        ways, features = learner.params["head.weight"].shape
        kind = "logistic" if isinstance(head, LogisticHead) else "linear"
    has_bn = bool(_batch_norms(learner.module))
    return {"head": kind, "ways": int(ways), "features": int(features),
            "batch_norm": batch_norm if has_bn else "none", **extra}


def _batch_norms(module: nn.Module) -> list[tuple[nn.Module, str, nn.modules.batchnorm._BatchNorm]]:
    """``(parent, child name, layer)`` of every batch-statistics BatchNorm layer (those
    with running statistics, a pretrained encoder's, keep them)."""
    return [(parent, name, child) for parent in module.modules()
            for name, child in parent.named_children()
            if isinstance(child, nn.modules.batchnorm._BatchNorm)
            and not child.track_running_stats]


def _frozen_like(bn: nn.modules.batchnorm._BatchNorm) -> nn.modules.batchnorm._BatchNorm:
    """An eval-mode BatchNorm of ``bn``'s class and size with running statistics (unset)."""
    new = type(bn)(bn.num_features, eps=bn.eps, momentum=None, affine=bn.affine,
                   track_running_stats=True)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    return new.eval()


def freeze_batch_norm(module: nn.Module, x: Tensor | None = None) -> nn.Module:
    """Replace (in place) every batch-statistics BatchNorm of ``module`` by an eval-mode
    one whose running mean and variance are the statistics of its input when ``module``
    runs on ``x [B, *in]`` (the support set); without ``x``, only the structure (for
    loading a state dict). Returns ``module``."""
    layers = _batch_norms(module)
    stats: dict[int, tuple[Tensor, Tensor]] = {}
    if x is not None:
        def keep(layer: nn.Module, args: tuple[Tensor, ...]) -> None:
            dims = [0, *range(2, args[0].dim())]  # all but the channel axis
            var, mean = torch.var_mean(args[0], dim=dims, correction=0)  # [C], [C]
            stats[id(layer)] = (mean.detach(), var.detach())

        hooks = [bn.register_forward_pre_hook(keep) for _, _, bn in layers]
        try:
            with torch.no_grad():
                module(x)
        finally:
            for h in hooks:
                h.remove()
    for parent, name, bn in layers:
        new = _frozen_like(bn)
        if id(bn) in stats:
            mean, var = stats[id(bn)]
            new.running_mean.copy_(mean)  # type: ignore[union-attr, operator]
            new.running_var.copy_(var)  # type: ignore[union-attr, operator]
        setattr(parent, name, new)
    return module


def encoder_config(encoder_dir: Path) -> Any:
    """The ``transformers`` config of the encoder in ``encoder_dir`` (its config.json)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(encoder_dir), local_files_only=True)


#: Largest tokenizer vocabulary a model directory may declare (multilingual encoders have
#: about 250,000 tokens).
MAX_VOCABULARY = 2_000_000


def check_vocabulary_spec(spec: object, table_rows: int) -> int:
    """The tokenizer size of ``architecture.vocabulary`` in ``model.json`` (``spec``),
    checked against the token table's ``table_rows`` (the encoder config's
    ``vocab_size``).

    Raises:
        ValueError: not ``{"kept": K, "tokenizer": V}`` with integers
            ``1 <= K == table_rows <= V <= MAX_VOCABULARY``.
    """
    if not isinstance(spec, Mapping) or set(spec) != {"kept", "tokenizer"}:
        raise ValueError('model.json: architecture.vocabulary must be {"kept": K, '
                         '"tokenizer": V}')
    kept, size = spec["kept"], spec["tokenizer"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (kept, size)):
        raise ValueError("model.json: architecture.vocabulary.kept and .tokenizer must be "
                         "integers")
    if not 1 <= kept <= size <= MAX_VOCABULARY:
        raise ValueError(f"model.json: architecture.vocabulary needs 1 <= kept <= tokenizer "
                         f"<= {MAX_VOCABULARY}, got kept {kept}, tokenizer {size}")
    if kept != table_rows:
        raise ValueError(f"model.json: architecture.vocabulary.kept is {kept} but "
                         f"encoder/config.json's vocab_size is {table_rows}")
    return int(size)


def _text_body(recipe: Recipe, config: Any, pad_id: int) -> nn.Module:
    """The text body built from the encoder's ``config`` alone (no pretrained weights are
    read: they come with the state dict)."""
    import transformers
    from transformers import AutoModel

    from metafit.models.text import TextBody

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        try:
            encoder = AutoModel.from_config(config, attn_implementation="eager",
                                            add_pooling_layer=False)
        except TypeError:  # encoders without a pooler
            encoder = AutoModel.from_config(config, attn_implementation="eager")
    finally:
        transformers.logging.set_verbosity(verbosity)
    return TextBody(encoder, recipe.pooling, pad_id)


def build_module(arch: Mapping[str, Any], recipe: Recipe, text_config: Any = None,
                 pad_id: int = 0) -> FewShotModel:
    """An untrained module with the structure of an adapted model (load its state dict
    into it): ``recipe``'s body (text: built from the encoder's ``text_config``, see
    :func:`encoder_config`; image_encoder: from ``text_config``, an
    :class:`~metafit.models.image_encoder.EncoderSpec`), the head of ``arch``, and frozen
    BatchNorm layers for ``arch["batch_norm"] == "support"``, and a text body's token map
    for ``arch["vocabulary"]`` (:mod:`metafit.deploy.vocabulary`). In eval mode."""
    from metafit.algorithms.from_recipe import build_model

    if recipe.model == "text":
        if text_config is None:
            raise ValueError("a text model needs its encoder's config")
        body = _text_body(recipe, text_config, pad_id)
        vocabulary = arch.get("vocabulary")
        if vocabulary is not None:  # a trimmed token table (metafit.deploy.vocabulary)
            size = check_vocabulary_spec(vocabulary, int(text_config.vocab_size))
            cast(Any, body).set_token_map(torch.zeros(size, dtype=torch.long))
    elif recipe.model == "image_encoder":
        from metafit.models.image_encoder import EncoderSpec, encoder_from_config

        if not isinstance(text_config, EncoderSpec):
            raise ValueError("an image_encoder model needs its encoder's config and "
                             "preprocessing (an EncoderSpec)")
        body = encoder_from_config(text_config)
    else:
        body = cast(FewShotModel, build_model(recipe.model_copy(update={"ways": 1}))).body
    ways, features = int(arch["ways"]), int(arch["features"])
    head: nn.Module
    if arch["head"] == "prototypes":
        # model directories written before the cosine distance carry no "distance"
        head = PrototypeHead(torch.zeros(ways, features), arch.get("distance", "sqeuclidean"),
                             float(arch.get("scale", 1.0)))
    elif arch["head"] == "linear":
        head = nn.Linear(features, ways)
    elif arch["head"] == "logistic":
        head = LogisticHead(features, ways)
    else:
        raise ValueError(f"unknown head {arch['head']!r}")
    module = FewShotModel(body, head, features)
    if arch.get("batch_norm") == "support":
        freeze_batch_norm(module)
    return module.eval()


def materialise(learner: Learner, recipe: Recipe, support_x: Tensor,
                batch_norm: BatchNormMode = "support", text_config: Any = None,
                pad_id: int = 0) -> tuple[FewShotModel, dict[str, Any]]:
    """The adapted model as a plain module, and its architecture (:func:`architecture`).

    ``support_x [S, *x]``: the support inputs, whose BatchNorm statistics are frozen in
    with ``batch_norm="support"``. The module holds copies of the learner's tensors.
    """
    if batch_norm not in ("support", "batch"):
        raise ValueError(f"batch_norm must be 'support' or 'batch', got {batch_norm!r}")
    arch = architecture(learner, batch_norm)
    module = build_module({**arch, "batch_norm": "batch"}, recipe, text_config, pad_id)
    module.load_state_dict(learner_state(learner), strict=True)
    if arch["batch_norm"] == "support":
        freeze_batch_norm(module, support_x)
    return module.eval(), arch
