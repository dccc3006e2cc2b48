"""The BANKING77 protocol A grid, every algorithm x adapt scope, from recorded result rows.

    python benchmarks/text_grid.py ROWS.jsonl [ROWS.jsonl ...]

Each file holds one JSON object per line, as ``benchmarks/text.py A`` prints them (and the
GPU scripts collect them): ``algorithm``, ``scope``, ``shots``, ``accuracy``, ``ci95``,
``iterations``, ``train_seconds``, ``eval_seconds``, ``trainable``, ``total``, ``device``.
Lines without ``shots`` (protocol B rows) are skipped. Where two files have the same
algorithm, scope and shot count, the later file's row is shown. Writes the grid to
``--results`` between ``<!-- text_A_grid:start/end -->``, with every cell that has no row
marked "not run", so what is missing is visible.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from common import RESULTS_MD, write_block

ALGORITHMS = ["maml", "fomaml", "reptile", "anil", "protonet", "protonet-cos20", "finetune",
              "linear_probe"]
SCOPES = ["full", "top", "lora", "head"]
SHOTS = [1, 5]


def read_rows(paths: list[str]) -> dict[tuple[str, str, int], dict[str, Any]]:
    """``(algorithm, scope, shots) -> row``; later files win."""
    rows: dict[tuple[str, str, int], dict[str, Any]] = {}
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if "shots" in row:
                rows[(row["algorithm"], row["scope"], int(row["shots"]))] = row
    return rows


def applicable(algorithm: str, scope: str) -> str | None:
    """Why a cell cannot exist, or ``None``."""
    if algorithm.startswith("protonet") and scope == "head":
        return "n/a: ProtoNet has no head"
    if algorithm == "linear_probe" and scope != "head":
        return "n/a: frozen encoder"
    return None


def cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "not run"
    return f"{100 * row['accuracy']:.2f} ± {100 * row['ci95']:.2f}"


def timing(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return (f"{row['iterations']} it, {row['train_seconds']:.0f} s + "
            f"{row['eval_seconds']:.0f} s ({row['device']})")


def grid(rows: dict[tuple[str, str, int], dict[str, Any]]) -> tuple[str, int]:
    """The markdown grid and the number of applicable cells without a row."""
    lines = ["| algorithm | adapt | trainable / total params | 1 shot | 5 shots | "
             "1 shot: iterations, train + test time | 5 shots: iterations, train + test time |",
             "|---|---|---|---|---|---|---|"]
    missing = 0
    for algorithm in ALGORITHMS:
        for scope in SCOPES:
            reason = applicable(algorithm, scope)
            if reason is not None:
                continue
            found = [rows.get((algorithm, scope, s)) for s in SHOTS]
            missing += sum(r is None for r in found)
            known = next((r for r in found if r is not None), None)
            params = ("-" if known is None
                      else f"{known['trainable']:,} / {known['total']:,}")
            lines.append(f"| {algorithm} | {scope} | {params} | {cell(found[0])} | "
                         f"{cell(found[1])} | {timing(found[0])} | {timing(found[1])} |")
    return "\n".join(lines), missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", help="JSON-lines files of protocol A rows")
    parser.add_argument("--results", default=str(RESULTS_MD))
    args = parser.parse_args()
    table, missing = grid(read_rows(args.rows))
    sources = " ".join(f"`{p}`" for p in args.rows)
    block = (f"Command: `python benchmarks/text_grid.py {' '.join(args.rows)}` (rows from "
             f"{sources}; a later file's row replaces an earlier one's). Accuracy: 600 fixed "
             f"5-way episodes of the 20 test intents, mean ± 95% CI; {missing} cells not run."
             f"\n\n{table}")
    write_block(Path(args.results), "text_A_grid", "BANKING77, protocol A: the grid", block)
    print(block)


if __name__ == "__main__":
    main()
