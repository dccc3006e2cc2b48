"""Omniglot load and episode-sampling speed.

    python benchmarks/data_load.py --data-root ../shared/data/omniglot [--cache-dir DIR]

Loads Omniglot (all sets found under ``--data-root``, ``split=None``, 28x28, rotations)
into a fresh, empty cache directory (a new temporary folder, inside ``--cache-dir`` when
given, removed at the end), so the first load is a true cold decode; then times cached
loads (median of 3) and the sampling of 5-way 1-shot 15-query episodes from the loaded
dataset, as one ``sample(1000)`` call and as 32 calls of ``sample(32)`` (median of 5
each). Ends with a Markdown table fragment for ``benchmarks/RESULTS.md``; the rows also go to
``data_load.json`` in ``--results-dir`` (default ``benchmarks/results/<today>/``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch
from common import results_dir, write_rows

from metafit.data.omniglot import Omniglot
from metafit.data.sampler import EpisodeSampler


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_time(fn: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed(fn) for _ in range(repeats))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="folder with the Omniglot zips")
    parser.add_argument("--cache-dir", default=None, help="parent of the fresh cache folder")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--results-dir", default=None,
                        help="folder for the raw rows (default: benchmarks/results/<today>/)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    if args.cache_dir:
        os.makedirs(args.cache_dir, exist_ok=True)
    cache = tempfile.mkdtemp(prefix="metafit-bench-cache-", dir=args.cache_dir)
    os.environ["METAFIT_CACHE"] = cache
    rows: list[tuple[str, str]] = []
    try:
        cold = time.perf_counter()
        ds = Omniglot(args.data_root, split=None)
        cold = time.perf_counter() - cold
        print(f"sources:             {', '.join(os.path.basename(s) for s in ds.sources)}")
        print(f"alphabets:           {len(ds.alphabets)}")
        print(f"characters:          {ds.num_characters}")
        print(f"images:              {ds.num_images}")
        print(f"classes (rotations): {ds.num_classes}  ({len(ds)} examples, {ds.example_shape})")
        print(f"alphabet split (scheme 'alphabet', seed 0): {ds.alphabet_splits}")
        warm = median_time(lambda: Omniglot(args.data_root, split=None), 3)
        warm_plain = median_time(lambda: Omniglot(args.data_root, rotations=False), 3)
        print(f"cold load (decode + cache write): {cold:.3f} s")
        print(f"cached load, median of 3:         {warm:.3f} s")
        print(f"  same, without rotations:        {warm_plain:.3f} s")
        rows += [
            (f"Omniglot cold load (decode {ds.num_images} PNGs to 28x28)", f"{cold:.2f} s"),
            ("Omniglot cached load (median of 3), with rotations", f"{warm:.3f} s"),
            ("Omniglot cached load (median of 3), no rotations", f"{warm_plain:.3f} s"),
        ]

        sampler = EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)
        sampler.sample(32)  # warm-up
        n = args.episodes
        one = median_time(lambda: sampler.sample(n), 5)
        calls = median_time(lambda: [sampler.sample(32) for _ in range(32)], 5)
        print(f"sample({n}) once, median of 5:   {one:.3f} s = {n / one:,.0f} episodes/s")
        print(f"32 x sample(32), median of 5:     {calls:.3f} s = {1024 / calls:,.0f} episodes/s")
        rows += [
            (f"5-way 1-shot 15-query: one sample({n}) (median of 5)", f"{n / one:,.0f} ep/s"),
            ("5-way 1-shot 15-query: 32 x sample(32) (median of 5)", f"{1024 / calls:,.0f} ep/s"),
        ]
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    command = "python benchmarks/data_load.py " + shlex.join(argv or sys.argv[1:])
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    print()
    print(f"#### Data loading (`{command}`)")
    print()
    print(
        f"Machine: {machine}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}."
    )
    print()
    print("| measurement | result |")
    print("|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    write_rows(results_dir(args.results_dir), "data_load.json",
               {"command": command, "rows": dict(rows)})


if __name__ == "__main__":
    main()
