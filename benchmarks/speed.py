"""Meta-training speed: metafit against higher, TorchOpt and a plain per-task loop.

Runs ``metafit bench`` over the issue's grid (MAML, FOMAML, ANIL, Reptile with 1 and 5
inner steps and ProtoNet on the Omniglot shape: conv4-64, 1x28x28, 5-way 1-shot, 15
queries, meta-batch 32; the inner-loop methods on the sinusoid MLP 1-40-40-1), with peak
memory, and writes the table with the machine and the command into ``RESULTS.md`` between
``<!-- speed:start -->`` and ``<!-- speed:end -->`` (and the raw rows to ``speed.json`` in
``--results-dir``, by default ``benchmarks/results/<today>/``).

Usage (needs the ``bench`` extra: ``pip install -e '.[bench]' -c constraints.txt``)::

    python benchmarks/speed.py                  # the full grid (its run time: RESULTS.md)
    python benchmarks/speed.py --quick          # a smoke run, results not written
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import add_output_options, machine, results_dir, write_block, write_rows

from metafit.cli import bench


def section(rows: list[bench.BenchRow], peers: list[str], command: str, seconds: float) -> str:
    """The Markdown block for RESULTS.md."""
    return "\n".join([
        f"Machine: {machine()}. Command: `{command}` ({seconds / 60:.0f} min). Cells: tasks/s "
        "(median of the timed repeats, alternating implementations in one process) / peak "
        "memory added by one meta-gradient (fresh subprocess, Linux VmHWM). The speed-up "
        "is metafit's tasks/s over the fastest peer's; the last column is the largest "
        "relative difference between a peer's meta-gradient and metafit's.",
        "",
        bench.format_table(rows, peers),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run; writes nothing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory")
    add_output_options(parser)
    args = parser.parse_args(argv)
    peers = list(bench.PEERS)
    configs = bench.default_configs(args.quick)
    start = time.perf_counter()
    rows = []
    for i, cfg in enumerate(configs, 1):
        row = bench.run_config(cfg, peers, args.repeats, memory=not args.no_memory)
        rows.append(row)
        best, ratio = row.speedup()
        sys.stdout.write(f"[{i}/{len(configs)}] {cfg.label}: {ratio:.2f}x {best}\n")
        sys.stdout.flush()
    elapsed = time.perf_counter() - start
    table = bench.format_table(rows, peers)
    sys.stdout.write("\n" + table + "\n")
    if args.quick:
        return 0
    command = "python benchmarks/speed.py" + ("" if args.repeats == 5 else
                                              f" --repeats {args.repeats}")
    write_block(Path(args.results), "speed",
                "Meta-training speed against the peers (`benchmarks/speed.py`)",
                section(rows, peers, command, elapsed))
    write_rows(results_dir(args.results_dir), "speed.json", [r.to_json() for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
