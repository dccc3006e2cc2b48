"""The forgetting figure of a warm-started re-meta-training, and what it gained.

    python benchmarks/forgetting.py runs/omni_b --episodes 600

``RUN`` was trained with ``init_from=PREVIOUS`` (``metafit train ... init_from=PREVIOUS``),
which wrote ``RUN/forgetting.json`` at the end of training
(:mod:`metafit.runs.forgetting`: PREVIOUS's test episodes scored with the warm-start
weights and with RUN's best). This script reads that file and completes the 2 x 2 table:
both checkpoints (PREVIOUS's best = the warm start, RUN's best) on both runs' fixed test
episodes (each recipe's own data, ways, shots, queries and seed; deployed BatchNorm, as
``metafit evaluate``), with RUN's algorithm, mean and 95% CI
(:func:`metafit.evaluation.protocol.evaluate`), and the paired difference per test set.
Rows go to ``forgetting_rows.json`` in ``--results-dir``, the table to the ``forgetting``
block of ``--results``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from common import add_output_options, cpu_only, publish

from metafit.evaluation.protocol import ci95, evaluate
from metafit.runs.directory import load_checkpoint, restore_state
from metafit.runs.forgetting import check_previous_run, read_forgetting
from metafit.runs.trained import load_trained, split_sampler


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run trained with init_from=PREVIOUS")
    p.add_argument("--episodes", type=int, default=600, help="test episodes per test set")
    p.add_argument("--threads", type=int, default=1)
    add_output_options(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    recipe, algo = load_trained(args.run)
    if not recipe.init_from:
        p.error(f"{args.run} was not warm-started (no init_from)")
    figure = read_forgetting(args.run)
    old_recipe, source = check_previous_run(recipe.init_from)
    new_weights = {k: v.clone() for k, v in algo.state_dict().items()}
    old_weights = load_checkpoint(source)
    tasks = {"previous run's test tasks": old_recipe, "new run's test tasks": recipe}
    rows: list[dict[str, Any]] = []
    for name, task_recipe in tasks.items():
        sampler = split_sampler(task_recipe, "test")
        scores = {}
        for label, weights in (("before", old_weights), ("after", {"algorithm": new_weights})):
            restore_state(algo, weights, label)
            scores[label] = evaluate(algo, sampler, episodes=args.episodes,
                                     batch_norm="support")
        diff = (torch.tensor(scores["after"].per_episode, dtype=torch.float64)
                - torch.tensor(scores["before"].per_episode, dtype=torch.float64))
        rows.append({"tasks": name, "data_root": task_recipe.data_root,
                     "ways": sampler.ways, "shots": sampler.shots, "episodes": args.episodes,
                     **{f"{k}_mean": v.mean for k, v in scores.items()},
                     **{f"{k}_ci95": v.ci95 for k, v in scores.items()},
                     "delta_mean": float(diff.mean()), "delta_ci95": ci95(diff)})
        print(rows[-1], file=sys.stderr)
    rows.append({"forgetting_json": figure})
    command = "python benchmarks/forgetting.py " + " ".join(sys.argv[1:] if argv is None
                                                           else argv)
    lines = [f"Machine: {cpu_only()}. Command: `{command}` (after the training commands "
             f"of the section). Run `{args.run}`, warm-started from `{recipe.init_from}`; "
             f"{args.episodes} fixed test episodes per test set, deployed BatchNorm, mean ± "
             "95% CI; delta = after - before, paired per episode.", "",
             "| test tasks | data | task | before (warm start) % | after (new run's best) % "
             "| delta (points) |", "|---|---|---|---|---|---|"]
    for r in rows[:-1]:
        lines.append(f"| {r['tasks']} | `{Path(str(r['data_root'])).name}` | "
                     f"{r['ways']}-way {r['shots']}-shot | "
                     f"{100 * r['before_mean']:.2f} ± {100 * r['before_ci95']:.2f} | "
                     f"{100 * r['after_mean']:.2f} ± {100 * r['after_ci95']:.2f} | "
                     f"{100 * r['delta_mean']:+.2f} ± {100 * r['delta_ci95']:.2f} |")
    if figure is not None and figure["status"] == "measured":
        lines += ["", f"`{args.run}/forgetting.json` (written by training, "
                  f"{figure['episodes']} episodes): before "
                  f"{100 * figure['before']['mean']:.2f} ± {100 * figure['before']['ci95']:.2f}"
                  f", after {100 * figure['after']['mean']:.2f} ± "
                  f"{100 * figure['after']['ci95']:.2f}, delta "
                  f"{100 * figure['delta']['mean']:+.2f} ± {100 * figure['delta']['ci95']:.2f}"
                  " points."]
    publish(args, "forgetting", "Forgetting of a warm-started re-meta-training "
            "(`benchmarks/forgetting.py`)", "\n".join(lines), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
