"""A pretrained transformer encoder as a few-shot model (``text`` extra).

``text_model(...)`` returns a :class:`~metafit.models.base.FewShotModel` whose ``body``
maps token ids ``[B, L]`` (long, padded with the pad id) to a pooled sentence embedding
``[B, H]`` (mean over the non-padding tokens, as all-MiniLM-L6-v2 was trained, or the
``[CLS]`` vector) and whose ``head`` is a linear layer ``[B, H] -> [B, ways]``.

The encoder is loaded offline with the *eager* attention implementation: the fused CPU
attention kernel has no double backward, and second-order MAML differentiates through
attention twice. Dropout is off by default (``dropout=0``): an inner loop on five
examples is noisy enough, and random layers make the task-parallel path fall back to one
thread.

What adapts (``adapt``: full, top, head, lora) is :func:`metafit.models.adapt.
apply_adapt_scope`, shared with image encoders. With ``lora`` the outer loop meta-learns
the adapters' initialisation, as in meta-learned LoRA initialisations for few-shot text
classification.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from metafit.models.adapt import AdaptScope, apply_adapt_scope, transformer_layers
from metafit.models.base import FewShotModel, count_parameters, make_head

__all__ = ["TextBody", "text_model", "apply_adapt_scope", "count_parameters", "AdaptScope",
           "load_encoder", "transformer_layers"]

log = logging.getLogger(__name__)

Pooling = Literal["mean", "cls"]


class TextBody(nn.Module):
    """Token ids ``[B, L]`` -> pooled embedding ``[B, H]``.

    Padding (``ids == pad_id``) is masked out of attention and of the mean; the batch is
    first cut to its longest text, which changes no output (masked positions contribute
    nothing) and saves the work on padding. A batch of more than :attr:`length_chunk`
    texts goes through the encoder in chunks of that many texts of similar length
    (longest first, each chunk cut to its own longest) and comes back in its order: the
    same outputs and gradients, without padding every text to the batch's longest (the
    speed-up: ``benchmarks/text_speed.py``).

    :attr:`token_map` (None unless the vocabulary was trimmed,
    :mod:`metafit.deploy.vocabulary`): a ``[V]`` long buffer from the tokenizer's ids to
    the rows of a smaller token table, applied in :meth:`encode` (so ONNX exports carry
    it); padding and the mask are decided on the tokenizer's ids.
    """

    token_map: Tensor | None

    #: The batch is cut to its longest text (control flow on data): no vmap over tasks.
    per_task_only = True
    #: Texts per encoder call in a large batch (sorted by length); 0 = one call.
    length_chunk = 64

    def __init__(self, encoder: nn.Module, pooling: Pooling = "mean", pad_id: int = 0) -> None:
        super().__init__()
        if pooling not in ("mean", "cls"):
            raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.pad_id = pad_id
        self.register_buffer("token_map", None)

    def set_token_map(self, token_map: Tensor) -> None:
        """Route the tokenizer's ids through ``token_map [V]`` (long) from now on."""
        if token_map.dim() != 1 or token_map.dtype != torch.long:
            raise ValueError("token_map must be a 1-D long tensor")
        self.token_map = token_map

    def check_token_map(self, tokenizer_size: int) -> None:
        """Refuse a token map (loaded from a model directory) that could index outside
        the token table or does not cover every id of a ``tokenizer_size`` tokenizer.

        Raises:
            ValueError: the problem, in words.
        """
        token_map = self.token_map
        if token_map is None:
            return
        rows = int(cast(Any, self.encoder).get_input_embeddings().num_embeddings)
        if len(token_map) < tokenizer_size:
            raise ValueError(f"the token map has {len(token_map)} entries but the tokenizer "
                             f"has {tokenizer_size} tokens")
        if len(token_map) and (int(token_map.min()) < 0 or int(token_map.max()) >= rows):
            raise ValueError(f"the token map points outside the {rows}-row token table")

    def forward(self, ids: Tensor) -> Tensor:
        """``ids [B, L]`` long -> ``[B, H]``."""
        from metafit.models.tokenizer import length_order, trim

        if ids.is_floating_point():
            raise TypeError(f"a text model takes token ids (long), got {ids.dtype}")
        chunk = self.length_chunk
        if chunk <= 0 or len(ids) <= chunk:
            ids = trim(ids, self.pad_id)  # [B, L']
            return self.encode(ids, (ids != self.pad_id).long())  # [B, H]
        order = length_order(ids, self.pad_id)  # [B]
        parts = []
        for start in range(0, len(ids), chunk):
            part = trim(ids[order[start:start + chunk]], self.pad_id)  # [c, L_c]
            parts.append(self.encode(part, (part != self.pad_id).long()))  # [c, H]
        return torch.cat(parts).index_select(0, torch.argsort(order))  # [B, H]

    def encode(self, ids: Tensor, mask: Tensor) -> Tensor:
        """``ids [B, L]``, ``mask [B, L]`` (1 = token, 0 = padding; long) -> ``[B, H]``:
        the pooled embedding, with no data-dependent control flow (what an ONNX export
        traces, with dynamic batch and sequence axes)."""
        if self.token_map is not None:
            ids = self.token_map[ids]  # the tokenizer's ids -> rows of the trimmed table
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        # hidden: [B, L, H]
        if self.pooling == "cls":
            return hidden[:, 0]  # [B, H]
        m = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B, H]


def load_encoder(path: str | Path | None, dropout: float = 0.0) -> tuple[nn.Module, int]:
    """The encoder of a local Hugging Face model directory (None: the packaged
    all-MiniLM-L6-v2), with eager attention and the given dropout; and its pad id.

    Raises:
        ModelDirError: a missing directory or missing files (named).
    """
    import transformers
    from transformers import AutoConfig, AutoModel

    from metafit.models.tokenizer import check_model_dir, pad_id

    root = check_model_dir(path)
    config = AutoConfig.from_pretrained(str(root), local_files_only=True)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                "attention_dropout"):
        if hasattr(config, key):
            setattr(config, key, dropout)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "pooler weights not used" and the like
    transformers.logging.disable_progress_bar()
    try:
        kwargs: dict[str, Any] = {"config": config, "local_files_only": True,
                                  "attn_implementation": "eager"}
        try:
            encoder = AutoModel.from_pretrained(str(root), add_pooling_layer=False, **kwargs)
        except TypeError:  # encoders without a pooler
            encoder = AutoModel.from_pretrained(str(root), **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
    return encoder, pad_id(root)


def text_model(out_features: int | None, path: str | Path | None = None,
               pooling: Pooling = "mean", adapt: AdaptScope = "full", adapt_layers: int = 2,
               lora_r: int = 8, lora_alpha: int = 16, dropout: float = 0.0
               ) -> FewShotModel:
    """A pretrained encoder + a linear ``out_features``-way head (None: no head, for
    ProtoNet), with the ``adapt`` scope applied. Logs the trainable parameter count."""
    encoder, pad = load_encoder(path, dropout)
    body = TextBody(encoder, pooling, pad)
    width = int(cast(Any, encoder).config.hidden_size)
    model = FewShotModel(body, make_head(width, out_features), width)
    apply_adapt_scope(model, adapt, adapt_layers, lora_r, lora_alpha)
    trainable, total = count_parameters(model)
    log.debug("text model (%s, adapt=%s): %s of %s parameters trainable", pooling, adapt,
             f"{trainable:,}", f"{total:,}")
    return model
