"""Vocabulary trimming: a text model's token table cut to the tokens its domain uses.

A sentence encoder's token table is most of its weights (all-MiniLM-L6-v2: 30,522 x 384
= 11.7 M of 22.7 M parameters), and a model adapted to one task reads a small part of it:
BANKING77's 10,000 training sentences use about 3,000 distinct WordPiece tokens. Keeping
only the rows of the tokens that occur in a sample of the task's own texts (unlabelled
inputs, the stored support set) shrinks the model with no change to any output on texts
made of those tokens. This is the vocabulary trimming of Abdaoui et al. 2020 ("Load What
You Need: Smaller Versions of Multilingual BERT") and Ushio et al. 2023 ("An Efficient
Multilingual Language Model Compression through Vocabulary Trimming"), applied after
adaptation (their "post-trimming").

The tokenizer is left as it is; a ``[V]`` map from its ids to the kept rows
(:attr:`metafit.models.text.TextBody.token_map`, applied inside the model and so inside
its ONNX export) sends every token that was not kept to the row of the tokenizer's unknown
token. A text whose tokens were all seen gets exactly the untrimmed model's outputs; a
text with unseen tokens reads ``[UNK]`` in their place. :func:`trim_vocabulary` estimates
how often that happens from the texts themselves (the tokens of a held-out share of them
that the rest did not contain) and the benchmark measures its cost on a test set.

Stored in a model directory as ``architecture.vocabulary = {"kept": K, "tokenizer": V}``,
the ``encoder/config.json``'s ``vocab_size`` set to K, and the map in the weights
(``body.token_map``), checked on loading (every entry a row of the table, one entry per
tokenizer id: :func:`metafit.deploy.materialise.check_vocabulary_spec` and
:meth:`metafit.models.text.TextBody.check_token_map`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from metafit.deploy.errors import InputError
from metafit.deploy.preprocess import TextPreprocessor

if TYPE_CHECKING:  # the model directory's reader imports the checks below
    from metafit.deploy.adapted import AdaptedModel

__all__ = ["trim_vocabulary", "kept_tokens", "unseen_share"]

log = logging.getLogger(__name__)

def kept_tokens(model: AdaptedModel, ids: Tensor) -> Tensor:
    """The sorted tokenizer ids a trimmed ``model`` keeps for texts of token ids
    ``ids [M, L]``: those in ``ids``, in the stored support set, and every special
    token (padding, unknown, ...)."""
    prep = cast(TextPreprocessor, model.preprocessor)
    tokenizer = prep.load()
    parts = [ids.reshape(-1),
             torch.tensor([*tokenizer.all_special_ids, prep.pad_id], dtype=torch.long)]
    if model.support is not None:
        parts.append(model.support[0].reshape(-1))
    return torch.unique(torch.cat(parts))  # sorted


def unseen_share(ids: Tensor, kept: Tensor, special: Tensor) -> tuple[float, float]:
    """Share of the (non-special) tokens of ``ids [M, L]`` that are not in ``kept``, and
    share of the texts with at least one such token."""
    real = ~torch.isin(ids, special)  # [M, L]
    unseen = real & ~torch.isin(ids, kept)
    tokens = int(real.sum())
    return (float(unseen.sum()) / tokens if tokens else 0.0,
            float(unseen.any(1).float().mean()) if len(ids) else 0.0)


def _estimate(model: AdaptedModel, ids: Tensor, share: float, seed: int) -> dict[str, Any]:
    """How often new texts would meet a trimmed token: the vocabulary of all but a
    held-out ``share`` of the texts, scored on that share."""
    held = max(1, round(share * len(ids)))
    if len(ids) < 2 or held >= len(ids):
        return {"held_out_texts": 0, "unseen_token_share": None, "texts_with_unseen": None}
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed))
    kept = kept_tokens(model, ids[order[held:]])
    prep = cast(TextPreprocessor, model.preprocessor)
    special = torch.tensor([*prep.load().all_special_ids, prep.pad_id])
    token_share, text_share = unseen_share(ids[order[:held]], kept, special)
    return {"held_out_texts": held, "unseen_token_share": round(token_share, 6),
            "texts_with_unseen": round(text_share, 6)}


def trim_vocabulary(model: AdaptedModel, texts: Sequence[str], held_out: float = 0.1,
                    seed: int = 0) -> tuple[AdaptedModel, dict[str, Any]]:
    """``model`` (a text model) with its token table cut to the tokens of ``texts`` and
    of its stored support set (module docstring); and a report: tokens kept of the
    tokenizer's, parameters before and after, and the estimated share of unseen tokens
    (the vocabulary of all but ``held_out`` of the texts, scored on the rest, seeded).

    Raises:
        ValueError: not a text model, quantized already (trim first), trimmed already, a
            tokenizer without an unknown token.
        InputError: no texts, or a text that cannot be tokenised.
    """
    from metafit.deploy.distill import preprocess_inputs
    from metafit.deploy.quantize import is_quantized
    from metafit.deploy.reading import ENCODER
    from metafit.models.base import count_parameters

    if model.kind != "text":
        raise ValueError("vocabulary trimming is for text models; this one takes images")
    if is_quantized(model.module):
        raise ValueError("the model is quantized: trim the vocabulary first, then quantize")
    if "vocabulary" in model.arch:
        raise ValueError("the model's vocabulary is trimmed already")
    if not texts:
        raise InputError("vocabulary trimming needs texts (--unlabelled)")
    prep = cast(TextPreprocessor, model.preprocessor)
    tokenizer = prep.load()
    unk = tokenizer.unk_token_id
    if unk is None:
        raise ValueError("the tokenizer has no unknown token to send trimmed tokens to")
    ids = preprocess_inputs(model, texts)  # [M, L]
    kept = kept_tokens(model, ids)  # [K] sorted tokenizer ids
    module = copy.deepcopy(model.module)
    body = cast(Any, module.body)
    table = body.encoder.get_input_embeddings()  # [V, H]
    size = int(table.num_embeddings)
    if int(kept.max()) >= size:
        raise ValueError(f"the tokenizer produces id {int(kept.max())} but the token table "
                         f"has {size} rows")
    token_map = torch.full((max(size, len(tokenizer)),), -1, dtype=torch.long)
    token_map[kept] = torch.arange(len(kept))
    token_map[token_map < 0] = int(token_map[unk])
    pad = int(token_map[prep.pad_id])
    new_table = nn.Embedding(len(kept), table.embedding_dim, padding_idx=pad)
    new_table.weight.data.copy_(table.weight.data[kept])
    body.encoder.set_input_embeddings(new_table)
    config = body.encoder.config
    config.vocab_size, config.pad_token_id = len(kept), pad
    body.set_token_map(token_map)
    arch = {**model.arch, "vocabulary": {"kept": len(kept), "tokenizer": len(token_map)}}
    assets = {**model.assets, ENCODER + "config.json": config.to_json_string().encode()}
    before, after = count_parameters(model.module)[1], count_parameters(module)[1]
    record = {"kept": len(kept), "tokenizer": len(token_map), "texts": len(texts),
              "parameters": {"before": before, "after": after},
              **_estimate(model, ids, held_out, seed)}
    trimmed = model.derived(module=module.eval(), arch=arch, assets=assets,
                            compression={**model.compression, "vocabulary": record})
    log.info("vocabulary trimmed to %d of %d tokens (those of %d texts and the support "
             "set): %s -> %s parameters; unseen tokens on held-out texts: %s", len(kept),
             len(token_map), len(texts), f"{before:,}", f"{after:,}",
             record["unseen_token_share"])
    return trimmed, record
