"""How ``metafit compress`` prints its figures for people: what was done in words, a
before / after table of size and latency, and sentences for the rest (``--json`` prints
the same figures as data, unchanged)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["describe_compression", "figures_lines"]

#: (key of measure(), row label, unit) of the before/after table.
ROWS = (("bytes", "weights", "bytes"), ("gzip_bytes", "weights, gzipped", "bytes"),
        ("ms_batch1", "latency, batch 1", "ms"), ("ms_batch32", "latency, batch 32", "ms"))


def describe_compression(compression: Mapping[str, Any]) -> str:
    """``{"quantize": "int8", "prune": {"amount": 0.5, "scope": "global", ...}}`` ->
    ``"pruned 50% of the conv/linear weights (global), int8 dynamic quantization"``."""
    done = []
    distilled = compression.get("distill")
    if distilled:
        done.append(f"distilled into {distilled.get('student')} "
                    f"({distilled.get('parameters', {}).get('student', 0):,} parameters)")
    vocabulary = compression.get("vocabulary")
    if vocabulary:
        done.append(f"token table trimmed to {vocabulary.get('kept', 0):,} of "
                    f"{vocabulary.get('tokenizer', 0):,} tokens")
    prune = compression.get("prune")
    if prune:
        done.append(f"pruned {100 * float(prune.get('amount', 0.0)):g}% of the conv/linear "
                    f"weights ({prune.get('scope', 'global')})")
    if compression.get("quantize"):
        tables = " and embedding tables" if compression.get("quantize_embeddings") else ""
        done.append(f"{compression['quantize']} dynamic quantization of the linear "
                    f"layers{tables}")
    return ", ".join(done) or "not compressed"


def _size(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.3f} ms"
    for scale, name in ((2**20, "MiB"), (2**10, "KiB")):
        if value >= scale:
            return f"{value / scale:.2f} {name}"
    return f"{int(value)} B"


def _change(before: float, after: float) -> str:
    return f"{100 * (after - before) / before:+.1f}%" if before else "-"


def figures_lines(figures: Mapping[str, Any]) -> list[str]:
    """The figures of ``compress.compare`` (and ``test_episodes``, if measured) as lines
    of text: a table, then sentences; no Python or JSON syntax."""
    before, after = figures["before"], figures["after"]
    table = [("", "before", "after", "change")]
    table += [(label, _size(before[key], unit), _size(after[key], unit),
               _change(before[key], after[key])) for key, label, unit in ROWS]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = ["  " + "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                              for i, cell in enumerate(row)).rstrip() for row in table]
    lines.append(f"  sparsity: {100 * figures['sparsity']:.1f}% of the conv/linear weights "
                 "are zero")
    lines.append(f"  on the stored support set: {100 * figures['support_agreement']:.1f}% "
                 f"of the predictions unchanged, largest probability change "
                 f"{figures['support_max_prob_change']:.4f}")
    distilled = figures.get("distill")
    if distilled:
        lines.append(f"  student {distilled['student']}: {distilled['steps']} steps on "
                     f"{distilled['trained_on']} unlabelled inputs; agrees with the model on "
                     f"{100 * distilled['agreement']:.1f}% of {distilled['held_out']} held-out "
                     f"inputs ({100 * distilled['agreement_before']:.1f}% untrained)")
    vocabulary = figures.get("vocabulary")
    if vocabulary:
        share = vocabulary.get("unseen_token_share")
        estimate = ("" if share is None else
                    f"; on {vocabulary['held_out_texts']} held-out texts, "
                    f"{100 * share:.2f}% of the tokens (in "
                    f"{100 * vocabulary['texts_with_unseen']:.1f}% of the texts) were not "
                    "among the rest's and would read as [UNK]")
        lines.append(f"  token table: {vocabulary['kept']:,} of {vocabulary['tokenizer']:,} "
                     f"tokens kept, from {vocabulary['texts']} texts and the support "
                     f"set{estimate}")
    return lines
