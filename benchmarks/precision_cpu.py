"""What ``precision: bf16`` / ``fp16`` cost on this CPU: meta-gradient time per task of a
shipped Omniglot recipe under each precision (the recipe's model and episode shape,
random pixels, one thread, the per-task path), median of ``--repeats`` after one
untimed call.

    python benchmarks/precision_cpu.py --recipes omniglot_5w1s_maml omniglot_5w1s_fomaml

Mixed precision is a GPU setting here: this shows what it does on a CPU (RESULTS.md,
"Mixed precision on the CPU"). Rows go to ``benchmarks/results/<today>/NAME.json``
(``--name``, default ``precision_cpu``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "gpu"))
from common import machine, results_dir, write_rows  # noqa: E402
from convergence import random_tasks  # noqa: E402

from metafit.algorithms.from_recipe import build_algorithm  # noqa: E402
from metafit.config.recipe import load_recipe  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", nargs="+", default=["omniglot_5w1s_maml"])
    p.add_argument("--precisions", nargs="+", default=["float32", "bf16", "fp16"])
    p.add_argument("--tasks", type=int, default=8, help="tasks per timed meta-batch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--results-dir", default=None)
    p.add_argument("--name", default="precision_cpu", help="the rows' file: NAME.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for name in args.recipes:
        base = None
        for precision in args.precisions:
            recipe = load_recipe(name, ["data_root=.", "task_workers=1", f"precision={precision}"])
            algo = build_algorithm(recipe)
            episodes = random_tasks(recipe, "cpu", args.tasks)
            algo.meta_gradients(episodes)  # untimed
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                algo.meta_gradients(episodes)
                times.append(time.perf_counter() - t0)
            ms = 1000 * statistics.median(times) / args.tasks
            base = base or ms
            rows.append({"recipe": name, "precision": precision, "ms_per_task": ms,
                         "vs_float32": ms / base, "tasks": args.tasks, "repeats": args.repeats})
            print(f"{name} [{precision}]: {ms:.1f} ms per task ({ms / base:.2f}x float32)",
                  flush=True)
    path = write_rows(results_dir(args.results_dir), f"{args.name}.json",
                      {"machine": machine(), "rows": rows})
    print(f"rows: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
