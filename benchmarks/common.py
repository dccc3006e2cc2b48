"""Helpers shared by the benchmark scripts (``import common``: a script's own folder is on
``sys.path`` when it runs as ``python benchmarks/NAME.py``; ``experiments/`` scripts put
``benchmarks/`` there first).

* where things are: :data:`SHARED_DATA` (the lent datasets), :data:`OMNIGLOT` (its
  Omniglot zips);
* where things go: :data:`RESULTS_MD` (the published tables), :func:`results_dir`
  (raw rows: ``benchmarks/results/<today>/`` unless a folder is given), :func:`write_rows`,
  :func:`publish` (a run's rows and block, where ``--results-dir`` and ``--results`` say);
* :func:`write_block`: one benchmark's marked block of ``RESULTS.md``, replaced in place;
* the machine line of a table (:func:`machine`, :func:`cpu_only`, :func:`load_average`);
* BANKING77 data for the text scripts: :func:`k_shot_pool`, :func:`development_set`.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import random
from pathlib import Path
from typing import Any

import torch

from metafit.io import atomic_write_text

BENCHMARKS = Path(__file__).resolve().parent
RESULTS_MD = BENCHMARKS / "RESULTS.md"
#: Shared data beside the repository (``../shared/data``), where the lent datasets live.
SHARED_DATA = BENCHMARKS.parents[1] / "shared" / "data"
#: The lent Omniglot zips.
OMNIGLOT = SHARED_DATA / "omniglot"


# -- where results go ---------------------------------------------------------------------
def results_dir(folder: str | Path | None = None) -> Path:
    """``folder``, or ``benchmarks/results/<today>/`` (raw rows of a run made today)."""
    if folder is not None:
        return Path(folder)
    return BENCHMARKS / "results" / datetime.date.today().isoformat()


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """``--results`` (the Markdown file whose block the script replaces) and
    ``--results-dir`` (the folder for its raw rows)."""
    parser.add_argument("--results", default=str(RESULTS_MD),
                        help="the Markdown file whose block this benchmark replaces "
                             "(default: benchmarks/RESULTS.md)")
    parser.add_argument("--results-dir", default=None,
                        help="folder for the raw rows (default: benchmarks/results/<today>/)")


def write_rows(folder: Path, name: str, rows: Any) -> Path:
    """``rows`` as indented JSON in ``folder/name`` (the folder made if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(rows, indent=1))
    return path


def publish(args: argparse.Namespace, name: str, heading: str, block: str, rows: Any) -> None:
    """A finished run's results, where :func:`add_output_options` says: ``rows`` as
    ``NAME.json`` in ``--results-dir`` (:func:`write_rows`) and ``block`` as benchmark
    ``name``'s block of ``--results`` under ``## heading`` (:func:`write_block`)."""
    write_rows(results_dir(args.results_dir), f"{name}.json", rows)
    write_block(Path(args.results), name, heading, block)


def append_row(path: Path, row: dict[str, Any]) -> None:
    """``row`` as one more JSON line of ``path`` (the folder made if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def relative(path: Path) -> str:
    """``path`` as written in ``RESULTS.md``: relative to ``benchmarks/`` when inside it."""
    try:
        return path.resolve().relative_to(BENCHMARKS).as_posix()
    except ValueError:
        return str(path)


# -- RESULTS.md blocks --------------------------------------------------------------------
def markers(name: str) -> tuple[str, str]:
    """The start and end markers of benchmark ``name``'s block."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_block(path: Path, name: str, heading: str, block: str) -> None:
    """Replace ``name``'s block of ``path``, between ``<!-- NAME:start -->`` and
    ``<!-- NAME:end -->``, by ``block``; the rest of the file (commentary included) stays as
    it is. A file without the block gets a new ``## heading`` section at its end."""
    start, end = markers(name)
    text = path.read_text() if path.is_file() else "# Benchmark results\n"
    marked = f"{start}\n{block}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + marked + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n## {heading}\n\n" + marked + "\n"
    path.write_text(text)


# -- the machine line ---------------------------------------------------------------------
def machine() -> str:
    """CPU model, cores and threads, torch version, Python."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads, Python {platform.python_version()}")


def cpu_only() -> str:
    """Architecture, cores, Python, "CPU only" (the accuracy tables' machine line)."""
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, CPU only")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or ``unknown``."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


# -- BANKING77 ----------------------------------------------------------------------------
def k_shot_pool(train_csv: Path, k: int, seed: int, out: Path) -> Path:
    """K sentences per intent of ``train_csv`` (``random.Random(seed)`` over each intent's
    sentences in file order), written as ``out``: protocol B's training data."""
    with train_csv.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_label: dict[str, list[str]] = {}
    for r in rows:
        by_label.setdefault(r["category"], []).append(r["text"])
    rng = random.Random(seed)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["text", "category"])
    for label in sorted(by_label):
        for text in rng.sample(by_label[label], k):
            writer.writerow([text, label])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, buffer.getvalue())  # rows of one K and seed may run in parallel
    return out


def development_set(train_csv: Path, pool: Path, out: Path) -> Path:
    """The sentences of ``train_csv`` outside ``pool``, written as ``out`` (a development
    seed's held-out set: never ``test.csv``)."""
    with pool.open(encoding="utf-8") as f:
        taken = {(r["text"], r["category"]) for r in csv.DictReader(f)}
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["text", "category"])
    with train_csv.open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            if (r["text"], r["category"]) not in taken:
                writer.writerow([r["text"], r["category"]])
    atomic_write_text(out, buffer.getvalue())
    return out
