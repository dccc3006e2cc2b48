"""Tiny text fixtures built in the tests: a random 2-layer BERT with its own WordPiece
vocabulary (no download), and a CSV of synthetic intents whose words identify the class."""

from __future__ import annotations

import atexit
import csv
import functools
import random
import shutil
import tempfile
from pathlib import Path

import torch

SHARED = ["please", "my", "card", "account", "the", "i", "need", "help", "with", "a", "how",
          "do", "to", "is", "why", "can"]


def class_words(c: int) -> list[str]:
    return [f"{w}{c}" for w in ("alpha", "beta", "gamma", "delta")]


def sentences(classes: int, per_class: int, seed: int = 0) -> list[tuple[str, str]]:
    """``(text, label)`` rows: each text mixes 2-3 words of its class with shared words."""
    rng = random.Random(seed)
    rows = []
    for c in range(classes):
        for _ in range(per_class):
            words = rng.sample(class_words(c), rng.randint(2, 3)) + rng.sample(SHARED, 4)
            rng.shuffle(words)
            rows.append((" ".join(words), f"intent_{c}"))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "category"])
        writer.writerows(rows)
    return path


def make_model_dir(root: Path, classes: int = 12, layers: int = 2, hidden: int = 16) -> Path:
    """A random BERT (``layers`` x ``hidden``) and tokenizer saved in ``root``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    words = sorted({w for c in range(classes) for w in class_words(c)} | set(SHARED))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)},
                                  do_lower_case=True)
    tokenizer.save_pretrained(str(root))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden,
                        max_position_embeddings=64)
    BertModel(config).save_pretrained(str(root))
    return root


def session_dir(prefix: str) -> Path:
    """A new temporary directory that is deleted when the test process exits (the
    session-wide fixtures below are cached functions, not pytest fixtures, so pytest's
    own temporary directories do not cover them)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


@functools.cache
def shared_model_dir() -> Path:
    """One tiny model directory for the whole test session (read-only use)."""
    return make_model_dir(session_dir("metafit-tiny-bert-"))


def lora_model(ways: int, seed: int = 0):  # type: ignore[no-untyped-def]
    """The shared tiny BERT with LoRA (rank 2) on query/value and a ``ways``-way head;
    LoRA's B starts random instead of zero so that every adapter matrix gets a gradient
    at once (with B = 0, A's gradient is zero)."""
    from metafit.models.text import text_model

    model = text_model(ways, shared_model_dir(), adapt="lora", lora_r=2)
    torch.manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return model
