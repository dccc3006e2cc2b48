"""Trained Omniglot runs scored on Lake et al.'s within-alphabet one-shot task (issue 30).

Each ``NAME=RUN`` is scored, with the checkpoint ``--checkpoint``, on fixed episodes of its
own recipe's ``val`` or ``test`` split under both episode schemes
(:mod:`metafit.data.within`): ``random`` (the meta-learning papers' episodes, classes from
any held-out alphabet, rotations as classes) and ``within_alphabet`` (one alphabet per
episode, the support drawn by one drawer and the queries by others, no rotations), at each
``--ways`` with one shot, in the deployed BatchNorm setting (each query normalised with its
support set's statistics: the figure ``metafit adapt`` models give). Runs of one recipe and
seed see the same episodes, so every row is also paired with the first run (``--baseline``):
the mean and 95% CI of the per-episode differences. ``--support-augment M`` also scores
each run with ``M`` randomly distorted copies of every support image added to the support
set at adaptation (the training distortions, :class:`~metafit.data.augment.RandomAffine`;
benchmark-local, not a library option).

``NAME=RUN1+RUN2+...`` scores an ensemble: each member adapts to the support set on its
own (deployed setting) and the members' log-probabilities of each query are averaged
(for ProtoNets: the class with the least summed squared distance, over the members'
embeddings). The members must read the data alike (same dataset, image size and crop).
Every run is scored on the episodes of the seed ``--episode-seed`` (default: the first
run's recipe seed), so runs trained with other seeds are still paired episode by episode.

    python benchmarks/within_alphabet.py plain=/tmp/w30/A affine=/tmp/w30/B --episodes 600
    python benchmarks/within_alphabet.py one=/tmp/e/s0 two=/tmp/e/s0+/tmp/e/s1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from typing import Any

import common
import torch

from metafit.config.ensemble import INPUT_KEYS
from metafit.config.schema import make_recipe
from metafit.data.augment import RandomAffine
from metafit.episodes import Episodes
from metafit.evaluation.batch_norm import deployed_logits
from metafit.evaluation.protocol import ci95, evaluate
from metafit.runs.directory import RunDir
from metafit.runs.trained import load_trained, split_sampler

SCHEMES = ("random", "within_alphabet")


class AugmentedSupport:
    """A sampler whose fixed episodes carry ``copies`` randomly distorted copies of every
    support image beside it (:class:`~metafit.data.augment.RandomAffine`, seeded), the
    queries unchanged: support-set augmentation at adaptation time, benchmark-local."""

    def __init__(self, sampler: Any, copies: int, seed: int = 0) -> None:
        self.sampler, self.copies, self.seed = sampler, copies, seed
        self.ways, self.shots, self.queries = sampler.ways, sampler.shots, sampler.queries

    def fixed(self, n: int) -> Episodes:
        plain = self.sampler.fixed(n)
        gen = torch.Generator().manual_seed(self.seed)
        extra = [RandomAffine().images(plain.support_x, gen) for _ in range(self.copies)]
        return replace(plain, support_x=torch.cat([plain.support_x, *extra], 1),
                       support_y=plain.support_y.repeat(1, self.copies + 1))


def ensemble_accuracy(algos: list[Any], tasks: Episodes) -> list[float]:
    """Per-episode accuracy ``[T]`` of the ensemble ``algos`` on ``tasks``: each member
    adapted to the support set and scoring every query in the deployed BatchNorm setting
    (:func:`~metafit.evaluation.batch_norm.deployed_logits`), the members'
    log-probabilities averaged. One member gives :func:`deployed_curve`'s last column."""
    out = []
    with torch.no_grad():
        for task in tasks:
            votes = torch.zeros(())
            for algo in algos:
                steps = int(algo.default_eval_steps)
                *_, (params, _) = algo.trajectory(task.support_x, task.support_y, steps)
                learner = algo.make_learner(params, task.support_y, copy=False)
                logits = deployed_logits(algo.model, learner, task.support_x,
                                         task.query_x)  # [Q, ways]
                votes = votes + logits.log_softmax(-1)
            out.append(float((votes.argmax(-1) == task.query_y).float().mean()))
    return out


def score(runs: list[str], which: str, split: str, scheme: str, ways: int, episodes: int,
          copies: int = 0, seed: int | None = None) -> dict[str, Any]:
    """The accuracy of one run (or the ensemble of ``runs``) on ``episodes`` fixed
    ``ways``-way 1-shot episodes of the seed ``seed`` (default: the first run's)
    (``copies``: distorted copies of each support image added at adaptation)."""
    loaded = [load_trained(run, which) for run in runs]
    recipe = loaded[0][0]
    for run, (other, _) in zip(runs[1:], loaded[1:], strict=True):
        differ = [k for k in INPUT_KEYS if getattr(other, k) != getattr(recipe, k)]
        if differ:
            raise SystemExit(f"{run} reads the data unlike {runs[0]} ({', '.join(differ)}): "
                             "an ensemble's members must see the same images")
    recipe = make_recipe({**recipe.model_dump(), "episode_scheme": scheme, "test_ways": ways,
                          "test_shots": 1, "seed": recipe.seed if seed is None else seed},
                         f"{runs[0]} ({scheme}, {ways}-way)")
    start = time.perf_counter()
    sampler: Any = split_sampler(recipe, split)
    if copies:
        sampler = AugmentedSupport(sampler, copies)
    if len(loaded) == 1:
        result = evaluate(loaded[0][1], sampler, episodes=episodes, batch_norm="support")
        per_episode, mean, half = result.per_episode, result.mean, result.ci95
    else:
        per_episode = ensemble_accuracy([algo for _, algo in loaded], sampler.fixed(episodes))
        mean = statistics.mean(per_episode)
        half = ci95(torch.tensor(per_episode, dtype=torch.float64))
    return {"run": "+".join(runs), "checkpoint": which, "split": split, "scheme": scheme,
            "ways": ways, "episodes": episodes, "accuracy": mean, "ci95": half,
            "per_episode": per_episode, "batch_norm": "support",
            "seconds": round(time.perf_counter() - start, 1)}


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width (normal) of ``b - a`` per episode."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    return statistics.mean(d), 1.96 * statistics.stdev(d) / len(d) ** 0.5


def table(rows: list[dict[str, Any]], baseline: str, label: str = "run") -> list[str]:
    """The Markdown table of ``rows`` (``label``: the first column's name), each row paired
    with ``baseline``'s row of the same split, scheme and ways."""
    lines = [f"| {label} | split | episodes | ways | accuracy | paired change vs "
             f"{baseline} (points) |", "|---|---|---|---|---|---|"]
    base = {(r["split"], r["scheme"], r["ways"]): r for r in rows if r["name"] == baseline}
    for r in rows:
        ref = base.get((r["split"], r["scheme"], r["ways"]))
        change = "-"
        if ref is not None and r["name"] != baseline:
            mean, half = paired(ref["per_episode"], r["per_episode"])
            change = f"{100 * mean:+.2f} ± {100 * half:.2f}"
        lines.append(f"| {r['name']} | {r['split']} | {r['scheme']} | {r['ways']} | "
                     f"{100 * r['accuracy']:.2f} ± {100 * r['ci95']:.2f} | {change} |")
    return lines


def block(rows: list[dict[str, Any]], baseline: str, command: str) -> str:
    lines = [f"{common.machine()}; load average {common.load_average()}. Command: `{command}`. "
             "Deployed BatchNorm setting; mean ± 95% CI over episodes; the last column "
             f"pairs each row with `{baseline}` on the same episodes.", "",
             *table(rows, baseline)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", metavar="NAME=RUN[+RUN...]",
                   help="a run, or an ensemble of runs joined by +")
    p.add_argument("--baseline", help="the run the others are paired with (default: first)")
    p.add_argument("--checkpoint", default="last", choices=["best", "last"])
    p.add_argument("--splits", nargs="+", default=["val", "test"])
    p.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=SCHEMES)
    p.add_argument("--ways", type=int, nargs="+", default=[20, 5])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--support-augment", type=int, default=0, metavar="M",
                   help="also score each run with M distorted copies of every support "
                   "image added at adaptation (rows NAME+augM)")
    p.add_argument("--episode-seed", type=int, help="the seed of the episodes every run is "
                   "scored on (default: the first run's recipe seed)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="within_alphabet", help="the RESULTS block's name")
    common.add_output_options(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    named = [tuple(item.split("=", 1)) for item in args.runs]
    if any(len(item) != 2 for item in named):
        p.error("runs are NAME=RUN")
    baseline = args.baseline or named[0][0]
    seed = args.episode_seed
    if seed is None:
        seed = RunDir(named[0][1].split("+")[0]).read_recipe().seed
    rows = []
    for split in args.splits:
        for scheme in args.schemes:
            for ways in args.ways:
                for name, run in named:
                    for copies in sorted({0, args.support_augment}):
                        label = f"{name}+aug{copies}" if copies else name
                        row = {"name": label, "support_copies": copies,
                               **score(run.split("+"), args.checkpoint, split, scheme,
                                       ways, args.episodes, copies, seed)}
                        rows.append(row)
                        print(f"{label} {split} {scheme} {ways}-way: "
                              f"{100 * row['accuracy']:.2f} ± {100 * row['ci95']:.2f} "
                              f"({row['seconds']} s)", file=sys.stderr)
    command = "python benchmarks/within_alphabet.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    common.publish(args, args.name, "Omniglot within-alphabet one-shot (issue 30)",
                   block(rows, baseline, command), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
