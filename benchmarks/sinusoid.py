"""Every algorithm on the sinusoid task family (MAML paper protocol), as a command.

    python benchmarks/sinusoid.py [--out runs/bench_sinusoid] [--jobs 2]
                                  [--iterations maml=70000 reptile=10000 ...]

Trains each ``sinusoid_*`` recipe with the real CLI (``metafit train``, one torch thread
per process, ``--jobs`` processes at a time), evaluates it with ``metafit evaluate`` on 600
fixed 5-shot test tasks, and prints a Markdown table of the MSE after 1 and 10 inner steps
(mean +- 95% CI) with the training wall-clock; the rows go to ``sinusoid.json`` in
``--results-dir`` (default ``benchmarks/results/<today>/``). Paper reference (Finn et al.
2017, and the Meta-SGD paper's table): MAML 0.67 / 0.35, pretrained baseline 2.41 / 2.19.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from common import results_dir, write_rows

ALGORITHMS = ["maml", "fomaml", "metasgd", "anil", "reptile", "finetune"]
DEFAULT_ITERATIONS = {"maml": 70000, "fomaml": 70000, "metasgd": 70000, "anil": 70000,
                      "reptile": 10000, "finetune": 70000}


def train_and_evaluate(algorithm: str, iterations: int, out: Path) -> dict[str, object]:
    run = out / f"sinusoid_{algorithm}"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "metafit.cli", "train", f"sinusoid_{algorithm}",
                    f"iterations={iterations}", "threads=1", "--out", str(run),
                    "--no-progress"], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    ev = subprocess.run([sys.executable, "-m", "metafit.cli", "evaluate", str(run),
                         "--episodes", "600", "--steps", "10", "--json"],
                        check=True, capture_output=True, text=True)
    result = json.loads(ev.stdout)
    return {"algorithm": algorithm, "iterations": iterations, "train_seconds": seconds,
            "mse1": result["curve"][1], "ci1": result["curve_ci95"][1],
            "mse10": result["curve"][10], "ci10": result["curve_ci95"][10]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_sinusoid")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--algorithms", nargs="*", default=ALGORITHMS)
    parser.add_argument("--iterations", nargs="*", default=[], help="ALGO=N overrides")
    parser.add_argument("--results-dir", default=None,
                        help="folder for the raw rows (default: benchmarks/results/<today>/)")
    args = parser.parse_args()
    iters = dict(DEFAULT_ITERATIONS)
    for pair in args.iterations:
        name, _, n = pair.partition("=")
        iters[name] = int(n)
    out = Path(args.out)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda a: train_and_evaluate(a, iters[a], out), args.algorithms))
    print(f"Machine: {platform.machine()}, {torch.get_num_threads()} cores visible; torch "
          f"{torch.__version__}; {args.jobs} trainings at a time, 1 thread each.")
    print(f"Command: python benchmarks/sinusoid.py {' '.join(sys.argv[1:])}\n")
    print("| algorithm | iterations | train wall-clock | 5-shot MSE, 1 step "
          "| 5-shot MSE, 10 steps |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['algorithm']} | {r['iterations']} | {r['train_seconds'] / 60:.1f} min | "
              f"{r['mse1']:.3f} +- {r['ci1']:.3f} | {r['mse10']:.3f} +- {r['ci10']:.3f} |")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    write_rows(results_dir(args.results_dir), "sinusoid.json", rows)


if __name__ == "__main__":
    main()
