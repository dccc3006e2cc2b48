"""Continual updates on BANKING77: accuracy as labelled examples are added to an adapted
model, and when new intents are added by an update.

    metafit train banking77_probe val_episodes=10 threads=1 --out runs/banking_probe
    python benchmarks/continual.py runs/banking_probe --data-root ../shared/data/banking77 \\
        --seeds 0 1 2 --threads 1

An *update* of an adapted model (``metafit adapt --update``) re-adapts the run on the union
of the old support set and the new examples. This script measures exactly that with the
library's adapt API (:class:`metafit.deploy.Adapter`, the path ``metafit adapt`` takes):
each step adapts the run afresh on the grown support set, and every model is scored
through :meth:`~metafit.deploy.AdaptedModel.logits` on the test sentences it covers.

**Examples added.** For each seed, every intent's ``train.csv`` sentences are shuffled with
``random.Random(seed)`` (file order first); the support set at K examples per intent is the
first K of each intent's order, so the set at K = 2 holds the one at K = 1 and so on
(``--shots``, default 1 2 5 10): an update adds examples and never swaps the old ones.
Accuracy is over all ``test.csv`` sentences of the intents (``--intents``, default all 77:
3,080 sentences, 77-way). Beside it: the binomial 95% half-width of one seed's figure,
and *regressions*, the share of test sentences the previous step classified correctly and
this one does not (what a user notices after an update, besides the mean).

**A new intent added.** For each seed, ``--new`` intents (default 10) are drawn with
``random.Random(seed)``; the model is first adapted on the other intents at
``--old-shots`` examples each (default 5), then an update adds the new intents at
``--new-shots`` examples each (default 1 and 5; old examples unchanged). Rows: the old
intents' test sentences before (an N-k-way model) and after (N-way), the new intents'
sentences after, all sentences after, and the regressions on the old intents.

Numbers: mean over seeds with the 95% interval ``t * s / sqrt(n)`` (Student t, n seeds).
Rows go to ``continual_rows.json`` in ``--results-dir`` and the tables to the
``continual`` block of ``--results``.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import add_output_options, cpu_only, publish

from metafit.deploy import Adapter

# Student t quantiles (two-sided 95%) by degrees of freedom, for few seeds.
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
       9: 2.262}


def read_csv(path: Path) -> dict[str, list[str]]:
    """``{intent: [sentence, ...]}`` of a ``text,category`` CSV, in file order."""
    by_intent: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            by_intent.setdefault(row["category"], []).append(row["text"])
    return by_intent


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and Student-t 95% half-width of ``values`` (NaN for one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    t = T95.get(len(values) - 1, 1.96)
    return mean, t * statistics.stdev(values) / math.sqrt(len(values))


class Scorer:
    """Adapts the run to support sets and scores the adapted model on test sentences."""

    def __init__(self, adapter: Adapter, test: dict[str, list[str]]) -> None:
        self.adapter = adapter
        self.test = test
        self._inputs: dict[tuple[str, ...], torch.Tensor] = {}

    def adapt(self, support: dict[str, list[str]]) -> Any:
        """The model adapted to ``support`` (``{intent: sentences}``) as ``metafit adapt``
        makes it."""
        texts = [t for intent in sorted(support) for t in support[intent]]
        labels = [intent for intent in sorted(support) for _ in support[intent]]
        return self.adapter.adapt(texts, labels)

    def correct(self, model: Any, intents: list[str]) -> torch.Tensor:
        """bool ``[M]``: whether ``model`` classifies each test sentence of ``intents``
        (in order) correctly."""
        key = tuple(intents)
        if key not in self._inputs:  # tokenised once; the model runs every time
            self._inputs[key] = model.preprocess(
                [t for intent in intents for t in self.test[intent]])
        truth = [intent for intent in intents for _ in self.test[intent]]
        predicted = model.logits(self._inputs[key]).argmax(-1).tolist()  # [M]
        names = model.label_names
        return torch.tensor([names[p] == t for p, t in zip(predicted, truth, strict=True)])


def binomial(correct: torch.Tensor) -> float:
    """The normal-approximation 95% half-width of an accuracy over ``correct [M]``."""
    p = float(correct.float().mean())
    return 1.96 * math.sqrt(max(p * (1 - p), 0.0) / correct.numel())


def examples_added(scorer: Scorer, train: dict[str, list[str]], intents: list[str],
                   shots: list[int], seed: int) -> list[dict[str, Any]]:
    """One row per step of a support set grown 1 -> 2 -> ... examples per intent."""
    rng = random.Random(seed)
    order = {i: rng.sample(train[i], len(train[i])) for i in intents}
    rows: list[dict[str, Any]] = []
    previous: torch.Tensor | None = None
    for k in shots:
        t0 = time.perf_counter()
        model = scorer.adapt({i: order[i][:k] for i in intents})
        adapt_s = time.perf_counter() - t0
        ok = scorer.correct(model, intents)
        regressions = (float((previous & ~ok).float().mean()) if previous is not None
                       else float("nan"))
        rows.append({"table": "examples_added", "seed": seed, "shots": k,
                     "intents": len(intents), "test_sentences": int(ok.numel()),
                     "accuracy": float(ok.float().mean()), "binomial_ci95": binomial(ok),
                     "regressions": regressions, "adapt_seconds": round(adapt_s, 2)})
        previous = ok
        print(f"seed {seed}, {k} per intent: {100 * rows[-1]['accuracy']:.2f}%",
              file=sys.stderr)
    return rows


def intents_added(scorer: Scorer, train: dict[str, list[str]], intents: list[str],
                  new: int, old_shots: int, new_shots: list[int], seed: int
                  ) -> list[dict[str, Any]]:
    """The old intents before and after an update that adds ``new`` intents."""
    rng = random.Random(seed)
    added = sorted(rng.sample(intents, new))
    kept = [i for i in intents if i not in added]
    order = {i: rng.sample(train[i], len(train[i])) for i in intents}
    old_support = {i: order[i][:old_shots] for i in kept}
    before = scorer.correct(scorer.adapt(old_support), kept)
    rows: list[dict[str, Any]] = []
    for k in new_shots:
        model = scorer.adapt({**old_support, **{i: order[i][:k] for i in added}})
        old_ok, new_ok = scorer.correct(model, kept), scorer.correct(model, added)
        rows.append({"table": "intents_added", "seed": seed, "old_intents": len(kept),
                     "new_intents": new, "old_shots": old_shots, "new_shots": k,
                     "old_before": float(before.float().mean()),
                     "old_after": float(old_ok.float().mean()),
                     "new_after": float(new_ok.float().mean()),
                     "all_after": float(torch.cat([old_ok, new_ok]).float().mean()),
                     "old_regressions": float((before & ~old_ok).float().mean()),
                     "added": added})
        print(f"seed {seed}, +{new} intents at {k}: old {100 * rows[-1]['old_before']:.2f}"
              f" -> {100 * rows[-1]['old_after']:.2f}%, new {100 * rows[-1]['new_after']:.2f}%",
              file=sys.stderr)
    return rows


def pct(values: list[float]) -> str:
    """``"83.21 ± 1.20"`` (percent, Student-t 95% over seeds)."""
    mean, half = interval([100 * v for v in values])
    return f"{mean:.2f} ± {half:.2f}"


def block(rows: list[dict[str, Any]], args: argparse.Namespace, command: str) -> str:
    """The Markdown of both tables."""
    added = [r for r in rows if r["table"] == "examples_added"]
    grown = [r for r in rows if r["table"] == "intents_added"]
    seeds = sorted({r["seed"] for r in rows})
    intents = added[0]["intents"] if added else len(args.intents or []) or 77
    lines = [f"Machine: {cpu_only()}, {torch.get_num_threads()} thread(s). Command: "
             f"`{command}`. Run: `{args.run}` ({rows[0]['algorithm']}, "
             f"{rows[0]['classifier']}). Seeds {', '.join(map(str, seeds))}; mean ± 95% "
             f"CI (Student t over seeds).", "",
             f"Examples added ({intents} intents, all their test.csv sentences; each step "
             "re-adapts on the previous support set plus the new examples):", "",
             "| examples per intent | support size | accuracy % | one seed's binomial 95% | "
             "regressions vs previous step % | adapt s |", "|---|---|---|---|---|---|"]
    for k in args.shots:
        rs = [r for r in added if r["shots"] == k]
        reg = ("-" if k == args.shots[0] else pct([r["regressions"] for r in rs]))
        lines.append(f"| {k} | {k * intents} | {pct([r['accuracy'] for r in rs])} | "
                     f"± {100 * statistics.fmean(r['binomial_ci95'] for r in rs):.2f} | "
                     f"{reg} | {statistics.fmean(r['adapt_seconds'] for r in rs):.1f} |")
    if grown:
        first = grown[0]
        lines += ["", f"New intents added by an update ({first['old_intents']} old intents "
                  f"at {first['old_shots']} examples each, then {first['new_intents']} new "
                  "ones):", "",
                  "| new intents' examples | old intents before (N-k-way) | old intents "
                  "after (N-way) | new intents after | all after | old-intent regressions |",
                  "|---|---|---|---|---|---|"]
        for k in args.new_shots:
            rs = [r for r in grown if r["new_shots"] == k]
            lines.append(f"| {k} | {pct([r['old_before'] for r in rs])} | "
                         f"{pct([r['old_after'] for r in rs])} | "
                         f"{pct([r['new_after'] for r in rs])} | "
                         f"{pct([r['all_after'] for r in rs])} | "
                         f"{pct([r['old_regressions'] for r in rs])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a text run directory (e.g. of banking77_probe)")
    p.add_argument("--data-root", type=Path, required=True,
                   help="folder with BANKING77's train.csv and test.csv")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shots", type=int, nargs="+", default=[1, 2, 5, 10])
    p.add_argument("--intents", nargs="*", default=None,
                   help="intents to use (default: all of train.csv)")
    p.add_argument("--new", type=int, default=10, help="intents added by the update")
    p.add_argument("--old-shots", type=int, default=5)
    p.add_argument("--new-shots", type=int, nargs="+", default=[1, 5])
    p.add_argument("--threads", type=int, default=1)
    add_output_options(p)
    args = p.parse_args(argv)
    if sorted(args.shots) != args.shots:
        p.error("--shots must grow (an update adds examples)")
    torch.set_num_threads(args.threads)
    train, test = read_csv(args.data_root / "train.csv"), read_csv(args.data_root / "test.csv")
    intents = sorted(args.intents or train)
    adapter = Adapter.from_run(args.run)
    scorer = Scorer(adapter, test)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for seed in args.seeds:
        rows += examples_added(scorer, train, intents, args.shots, seed)
        if args.new:
            rows += intents_added(scorer, train, intents, args.new, args.old_shots,
                                  args.new_shots, seed)
    for r in rows:
        r.update(algorithm=adapter.recipe.algorithm, classifier=adapter.recipe.classifier)
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    command = "python benchmarks/continual.py " + " ".join(sys.argv[1:] if argv is None
                                                          else argv)
    publish(args, "continual", "Continual updates on BANKING77 (`benchmarks/continual.py`)",
            block(rows, args, command), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
