"""Meta-gradient speed of the library alone, through the public API only, so the same
script times any two versions side by side (``PYTHONPATH=OLD/src`` vs ``NEW/src``).

    python benchmarks/experiments/library_speed.py maml     # prints tasks/s

conv4 (64 filters), 5-way 1-shot with 15 queries, meta-batch 8, random images; the median
of 5 calls after one warm-up call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import metafit as mf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("algorithm", help="a registered algorithm, e.g. maml, anil, protonet")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    t = args.tasks
    y_s = torch.arange(5).repeat(t, 1)  # [T, 5]
    y_q = torch.arange(5).repeat_interleave(15).repeat(t, 1)  # [T, 75]
    eps = mf.Episodes(torch.rand(t, 5, 1, 28, 28, generator=g), y_s,
                      torch.rand(t, 75, 1, 28, 28, generator=g), y_q)
    head = None if args.algorithm == "protonet" else 5
    options = {} if head is None else {"inner_lr": 0.4, "inner_steps": 1}
    algo = mf.build_algorithm(args.algorithm, mf.models.conv4(head, 1, 64, 28), **options)
    algo.meta_gradients(eps)  # warm-up
    times = []
    for _ in range(args.calls):
        start = time.perf_counter()
        algo.meta_gradients(eps)
        times.append(time.perf_counter() - start)
    print(f"{args.algorithm} {t / statistics.median(times):.1f} tasks/s")


if __name__ == "__main__":
    main()
