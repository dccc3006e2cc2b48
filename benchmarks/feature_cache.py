"""Evaluation with the body's features cached across episodes, against running the body in
every episode, side by side on trained runs (``metafit.evaluation.feature_cache``).

    python benchmarks/feature_cache.py RUN [RUN ...] --episodes 600

For each run directory (a trained run of a model without batch statistics, e.g. a text
model; the speed-up is largest where adaptation leaves the body fixed), the same
fixed test episodes are scored twice in one process, cached first, then uncached
(``--repeats`` times, alternating; medians), with the run's own test-time steps and only the
curve's ends scored (``benchmarks/text.py``'s default). Prints and writes a table to
``--results`` between ``<!-- feature_cache:start/end -->``: seconds each way, the speed-up
and the largest per-episode accuracy difference (0 up to float rounding); the rows go to
``feature_cache.json`` in ``--results-dir`` (default ``benchmarks/results/<today>/``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any, cast

import torch
from common import add_output_options, results_dir, write_block, write_rows


def measure(run: Path, episodes: int, repeats: int, cached_only: bool) -> dict[str, Any]:
    """Time cached and uncached evaluations of ``run``'s test episodes."""
    from metafit.evaluation.protocol import evaluate
    from metafit.runs.trained import load_trained, split_sampler

    recipe, algo = load_trained(run, "best")
    steps = int(cast(Any, algo).default_eval_steps)
    sampler = split_sampler(recipe, "test")
    times: dict[bool, list[float]] = {True: [], False: []}
    results = {}
    for _ in range(repeats):
        for cache in (True,) if cached_only else (True, False):
            t0 = time.perf_counter()
            results[cache] = evaluate(algo, sampler, episodes=episodes, steps=steps,
                                      points=[0, steps], cache_features=cache)
            times[cache].append(time.perf_counter() - t0)
    row: dict[str, Any] = {
        "run": run.name, "algorithm": recipe.algorithm, "adapt": recipe.adapt,
        "shots": recipe.shots, "episodes": episodes, "steps": steps,
        "accuracy": results[True].mean, "cached_s": statistics.median(times[True]),
    }
    if not cached_only:
        diff = torch.tensor(results[True].per_episode) - torch.tensor(results[False].per_episode)
        row.update(uncached_s=statistics.median(times[False]),
                   max_episode_diff=float(diff.abs().max()),
                   accuracy_uncached=results[False].mean)
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
             f"{torch.__version__}. Command: `python benchmarks/feature_cache.py "
             f"{' '.join(args.runs)} --episodes {args.episodes} --repeats {args.repeats}`.",
             "",
             "| run | algorithm | adapt | shots | episodes | accuracy | cached s | uncached s "
             "| speed-up | largest per-episode difference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        uncached = r.get("uncached_s")
        lines.append(
            f"| {r['run']} | {r['algorithm']} | {r['adapt']} | {r['shots']} | {r['episodes']} "
            f"| {100 * r['accuracy']:.2f} | {r['cached_s']:.1f} | "
            + ("-" if uncached is None else f"{uncached:.1f}") + " | "
            + ("-" if uncached is None else f"{uncached / r['cached_s']:.1f}x") + " | "
            + ("-" if uncached is None else f"{r['max_episode_diff']:.2g}") + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="trained run directories")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cached-only", action="store_true",
                        help="time only the cached evaluation (the uncached one is slow); "
                             "prints the table without writing it to --results")
    add_output_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(Path(r), args.episodes, args.repeats, args.cached_only) for r in args.runs]
    write_rows(results_dir(args.results_dir), "feature_cache.json", rows)
    block = table(rows, args)
    if not args.cached_only:  # a table without the comparison does not replace one with it
        write_block(Path(args.results), "feature_cache", "Evaluation with cached body "
                    "features (`benchmarks/feature_cache.py`)", block)
    print(block)


if __name__ == "__main__":
    main()
