"""Choosing BANKING77 protocol B's meta-training schedule without its test set.

    python benchmarks/experiments/text_dev.py --data-root ../shared/data/banking77 --k 5 10

Protocol B meta-trains on nothing but the K-shot pool, so validation episodes drawn from
the pool score training data and cannot say when to stop. The schedule of the shipped
``banking77_kshot_protonet`` recipe (ProtoNet, cosine distance at scale 20, Adam 3e-5,
whole encoder) was therefore fixed on a **development seed** that ``benchmarks/text.py B``
never scores (100; the scored seeds are 0-4): its K-shot pool is drawn exactly like the
scored ones, and the development set is every other sentence of ``train.csv`` (about
9,200-9,600, never ``test.csv``). Every ``--every`` meta-training steps the script fits
prototypes on the pool (``metafit.evaluation.test_set.adapt_and_score``, as the benchmark does) and
scores the development set, 77-way. The rows go to ``text_dev.json`` in ``--results-dir``
(default ``benchmarks/results/<today>/``), the table to ``--results`` between
``<!-- text_dev:start/end -->``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: common
from common import (  # noqa: E402
    RESULTS_MD,
    cpu_only,
    development_set,
    k_shot_pool,
    results_dir,
    write_block,
    write_rows,
)


def curve(k: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Development accuracy every ``args.every`` steps of ProtoNet on the seed's pool."""
    from metafit.algorithms.from_recipe import build_algorithm
    from metafit.config.recipe import load_recipe
    from metafit.data.sampler import EpisodeSampler
    from metafit.data.splits import load_split
    from metafit.data.text_csv import TextCSV
    from metafit.evaluation.test_set import adapt_and_score

    root, out = Path(args.data_root), Path(args.out)
    pool = k_shot_pool(root / "train.csv", k, args.dev_seed, out / f"pool_k{k}.csv")
    dev_csv = development_set(root / "train.csv", pool, out / f"dev_k{k}.csv")
    shots = max(1, k // 2)
    recipe = load_recipe("banking77_kshot_protonet", {
        "data_root": str(pool), "shots": shots, "queries": k - shots,
        "test_shots": shots, "test_queries": k - shots, "distance_scale": args.scale,
        "outer_lr": args.lr})
    torch.set_num_threads(args.threads)
    pool_data = load_split(recipe, "train")
    dev = TextCSV(dev_csv, classes=pool_data.classes).tokenize(recipe.text_model,
                                                               recipe.max_length)
    assert isinstance(pool_data, TextCSV) and pool_data.tokens is not None
    assert dev.tokens is not None
    algo = build_algorithm(recipe)
    sampler = EpisodeSampler(pool_data, ways=77, shots=shots, queries=k - shots,
                             seed=recipe.seed)
    params = [p for p in algo.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=recipe.outer_lr)
    rows, t0 = [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            score = adapt_and_score(algo, pool_data.tokens, pool_data.targets, dev.tokens,
                                    dev.targets)
            rows.append({"k": k, "step": step, "accuracy": score.accuracy, "dev": score.test,
                         "seconds": round(time.perf_counter() - t0, 1)})
            print(rows[-1], flush=True)
        if step == args.steps:
            break
        algo.train()
        loss, _ = algo.meta_loss(sampler.sample(1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return rows


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    steps = sorted({r["step"] for r in rows})
    lines = [f"Machine: {cpu_only()}. Command: `python benchmarks/experiments/text_dev.py "
             f"{' '.join(sys.argv[1:])}`. Development seed {args.dev_seed}; cells: 77-way "
             "accuracy (%) of prototypes fitted on the pool, on the train.csv sentences "
             "outside it, after that many meta-training steps (step 0: the pretrained "
             "encoder).", "",
             "| K | development sentences | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for k in sorted({r["k"] for r in rows}):
        by_step = {r["step"]: r for r in rows if r["k"] == k}
        cells = " | ".join(f"{100 * by_step[s]['accuracy']:.2f}" for s in steps)
        lines.append(f"| {k} | {by_step[steps[0]]['dev']:,} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="directory with train.csv")
    parser.add_argument("--k", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--dev-seed", type=int, default=100)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--scale", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_text_dev")
    parser.add_argument("--results", default=str(RESULTS_MD))
    parser.add_argument("--results-dir", default=None,
                        help="folder for the raw rows (default: benchmarks/results/<today>/)")
    args = parser.parse_args()
    rows = [row for k in args.k for row in curve(k, args)]
    write_rows(results_dir(args.results_dir), "text_dev.json", rows)
    block = table(rows, args)
    write_block(Path(args.results), "text_dev", "BANKING77, protocol B: choosing the "
                "schedule on a development seed", block)
    print(block)


if __name__ == "__main__":
    main()
