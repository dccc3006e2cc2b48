"""Length-sorted text batches, side by side with one padded call (all-MiniLM-L6-v2).

    python benchmarks/text_speed.py --data-root ../shared/data/banking77

Two measurements on BANKING77, alternating the two ways in one process, median of
``--repeats``:

1. a ProtoNet (cosine) forward and backward on one 77-way 5-shot / 5-query episode drawn
   from a K = 10 pool (770 sentences): ``TextBody.length_chunk`` 64 (length-sorted chunks)
   against 0 (the episode as one call, padded to its longest sentence); the relative
   difference of the meta-gradients is printed too;
2. scoring the 3,080 ``test.csv`` sentences with prototypes (``adaptation.predict``):
   sorted by length against file order, batches of 256.

The medians go to ``text_speed.json`` in ``--results-dir`` (default
``benchmarks/results/<today>/``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from common import k_shot_pool, results_dir, write_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="directory with train.csv, test.csv")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="runs/bench_text_speed")
    parser.add_argument("--results-dir", default=None,
                        help="folder for the raw rows (default: benchmarks/results/<today>/)")
    args = parser.parse_args()

    from metafit.algorithms.from_recipe import build_algorithm
    from metafit.config.recipe import load_recipe
    from metafit.data.sampler import EpisodeSampler
    from metafit.data.splits import load_split
    from metafit.data.text_csv import TextCSV
    from metafit.evaluation.test_set import predict

    torch.set_num_threads(args.threads)
    root = Path(args.data_root)
    pool = k_shot_pool(root / "train.csv", 10, 0, Path(args.out) / "pool_k10_seed0.csv")
    recipe = load_recipe("banking77_kshot_protonet", {"data_root": str(pool), "shots": 5,
                                                      "queries": 5})
    data = load_split(recipe, "train")
    assert isinstance(data, TextCSV) and data.tokens is not None
    algo = build_algorithm(recipe)
    body = algo.model.body
    episodes = EpisodeSampler(data, ways=77, shots=5, queries=5, seed=0).sample(1)

    step: dict[int, list[float]] = {64: [], 0: []}
    grads: dict[int, torch.Tensor] = {}
    for _ in range(args.repeats):
        for chunk in step:
            body.length_chunk = chunk
            algo.zero_grad()
            t0 = time.perf_counter()
            loss, _ = algo.meta_loss(episodes)
            loss.backward()
            step[chunk].append(time.perf_counter() - t0)
            grads[chunk] = torch.cat([p.grad.flatten() for p in algo.parameters()
                                      if p.grad is not None])
    body.length_chunk = 64
    lengths = (episodes.support_x[0] != body.pad_id).sum(1).float()
    diff = float((grads[64] - grads[0]).norm() / grads[0].norm())
    a, b = statistics.median(step[64]), statistics.median(step[0])
    rows: dict[str, object] = {"episode_seconds": {"chunks_64": a, "one_call": b},
                               "meta_gradient_relative_difference": diff}
    print(f"77-way 5-shot episode ({2 * len(lengths)} sentences, support mean "
          f"{float(lengths.mean()):.1f} tokens, longest {int(lengths.max())}): forward + "
          f"backward {a:.2f} s in chunks of 64, {b:.2f} s as one call ({b / a:.2f}x); "
          f"meta-gradients differ by {diff:.1e} (relative)")

    test = TextCSV(root / "test.csv", classes=data.classes).tokenize(recipe.text_model,
                                                                      recipe.max_length)
    assert test.tokens is not None
    algo.eval()
    learner = algo.adapt(data.tokens, data.targets)
    score: dict[str, list[float]] = {"sorted": [], "file order": []}
    outs: dict[str, torch.Tensor] = {}
    for _ in range(args.repeats):
        for name, pad in (("sorted", body.pad_id), ("file order", None)):
            t0 = time.perf_counter()
            outs[name] = predict(learner, test.tokens, 256, pad)
            score[name].append(time.perf_counter() - t0)
    a, b = statistics.median(score["sorted"]), statistics.median(score["file order"])
    same = bool((outs["sorted"].argmax(-1) == outs["file order"].argmax(-1)).all())
    print(f"scoring {len(test.tokens):,} test sentences: {a:.2f} s sorted by length, {b:.2f} s "
          f"in file order ({b / a:.2f}x); same predictions: {same}")
    rows |= {"scoring_seconds": {"sorted": a, "file_order": b}, "same_predictions": same}
    write_rows(results_dir(args.results_dir), "text_speed.json", rows)


if __name__ == "__main__":
    main()
