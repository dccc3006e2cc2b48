"""BatchNorm at deployment: the accuracy of each way of normalising a query (issue 27).

The conv backbones normalise with batch statistics (no running statistics). For each cell
``RUN:NwKs`` (a trained run, scored on N-way K-shot episodes of its own test sampler, i.e.
``split_sampler(recipe, "test")`` with those ways and shots: the episodes ``metafit
evaluate`` scores) every episode is adapted once (``algo.adapt``: the algorithm's own
adaptation, support-set batch statistics) and its queries are scored under each setting:

* ``transductive``: the query set as one batch with its own statistics (the MAML papers'
  protocol; what ``metafit evaluate`` reported before issue 27). Not deployable: a
  prediction depends on the other inputs of its batch.
* ``support``: each query with the support set's statistics under the adapted parameters
  (what ``metafit adapt`` deploys, ``batch_norm="support"``).
* ``support+1``: each query normalised with the statistics of the support set plus that
  query (a batch of S+1, recomputed per query: costs S+1 forward rows per input).
* ``support+1 (one pass)``: the same mixture computed in one pass: at every layer each
  query's per-channel moments (over its spatial positions) are averaged with the support
  set's at weight 1/(S+1), the support rows themselves keeping the support statistics.
* ``online`` (``--settings ... online``): queries arrive one at a time in a fixed random
  order and each is normalised with the statistics of the support set and of every query
  seen so far, itself included (a model whose predictions depend on what it saw before).

Every setting but ``transductive`` scores an input on its own (given the support set).
Per cell: mean accuracy and 95% CI per setting, and the paired change against the
transductive score (mean and CI of the per-episode differences), and the milliseconds per
episode of each setting's scoring. The first episode of each cell is checked against the
library: ``support`` equals the materialised deployed module
(:func:`metafit.deploy.materialise.materialise`) and ``transductive`` the algorithm's
learner on the query batch.

    python benchmarks/batchnorm.py RUN:5w1s RUN:5w5s RUN2:20w1s ... --episodes 200
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import common
import torch
from torch import Tensor

from metafit.deploy.episodes import summarise
from metafit.deploy.materialise import materialise
from metafit.episodes import Episode
from metafit.evaluation.batch_norm import (
    StatsFn,
    channel_moments,
    deployed_logits,
    row_statistics,
)
from metafit.runs.trained import load_trained, split_sampler

SETTINGS = ["transductive", "support", "support+1", "support+1 (one pass)", "online"]
Scorer = Callable[[Any, Any, Episode], Tensor]  # (algo, learner, task) -> logits [M, N]


def grouped(size: int) -> StatsFn:
    """Each consecutive group of ``size`` rows with its own statistics."""
    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        g = x.shape[0] // size
        groups = x.reshape(g, size, *x.shape[1:]).transpose(0, 1)  # [size, G, C, *]
        dims = [0, *range(3, groups.dim())]
        var, mean = torch.var_mean(groups, dim=dims, correction=0)  # [G, C]
        return mean.repeat_interleave(size, 0), var.repeat_interleave(size, 0)  # [B, C]

    return stats


def support_plus_each(rows: int) -> StatsFn:
    """Rows after the first ``rows`` (the support set): the support set's moments averaged
    with the row's own spatial moments at weight 1 / (rows + 1); support rows: the
    support set's statistics."""
    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        mean_s, var_s = channel_moments(x[:rows])  # [C]
        flat = x[rows:].flatten(2)  # [M, C, P]
        mean_q = flat.mean(-1)  # [M, C]
        sq_q = flat.pow(2).mean(-1)  # [M, C]
        mean = (rows * mean_s + mean_q) / (rows + 1)  # [M, C]
        var = (rows * (var_s + mean_s ** 2) + sq_q) / (rows + 1) - mean ** 2  # [M, C]
        return (torch.cat([mean_s.expand(rows, -1), mean]),  # [B, C]
                torch.cat([var_s.expand(rows, -1), var.clamp_min(0)]))

    return stats


def score_transductive(algo: Any, learner: Any, task: Episode) -> Tensor:
    return learner(task.query_x)  # [M, N]: one batch, its own statistics


def score_support(algo: Any, learner: Any, task: Episode) -> Tensor:
    return deployed_logits(algo.model, learner, task.support_x, task.query_x)


def score_support_plus_one(algo: Any, learner: Any, task: Episode, rows: int = 512
                           ) -> Tensor:
    """Each query in its own batch with the support set, ``rows`` rows per forward pass
    (a bound on the activations' memory: 20-way 5-shot has 101 rows per query)."""
    s = task.support_x.shape[0]
    chunk = max(1, rows // (s + 1))
    out = []
    with row_statistics(algo.model, grouped(s + 1)):
        for start in range(0, len(task.query_x), chunk):
            q = task.query_x[start:start + chunk]  # [c, *x]
            batch = torch.cat([task.support_x.expand(len(q), *task.support_x.shape),
                               q[:, None]], 1)  # [c, S+1, *x]
            logits = learner(batch.flatten(0, 1))  # [c*(S+1), N]
            out.append(logits.reshape(len(q), s + 1, -1)[:, -1])  # [c, N]
    return torch.cat(out)


def score_one_pass(algo: Any, learner: Any, task: Episode) -> Tensor:
    s = task.support_x.shape[0]
    with row_statistics(algo.model, support_plus_each(s)):
        return learner(torch.cat([task.support_x, task.query_x]))[s:]


def score_online(algo: Any, learner: Any, task: Episode) -> Tensor:
    """Queries in a fixed random order; query j with support + queries 1..j."""
    order = torch.randperm(len(task.query_x), generator=torch.Generator().manual_seed(0))
    rows = []
    for j in range(len(order)):
        seen = task.query_x[order[: j + 1]]  # [j+1, *x]
        rows.append(learner(torch.cat([task.support_x, seen]))[-1])  # [N]
    logits = torch.stack(rows)  # [M, N] in arrival order
    out = torch.empty_like(logits)
    out[order] = logits
    return out


SCORERS: dict[str, Scorer] = {
    "transductive": score_transductive, "support": score_support,
    "support+1": score_support_plus_one, "support+1 (one pass)": score_one_pass,
    "online": score_online,
}


def parse_cell(text: str) -> tuple[str, int, int]:
    """``RUN:NwKs`` -> (run, N, K)."""
    run, _, task = text.rpartition(":")
    ways, _, shots = task.rstrip("s").partition("w")
    return run, int(ways), int(shots)


def check_first(algo: Any, recipe: Any, learner: Any, task: Episode,
                logits: dict[str, Tensor]) -> None:
    """The benchmark's support and transductive scores against the library's."""
    module, _ = materialise(learner, recipe, task.support_x, "support")
    with torch.no_grad():
        deployed = module(task.query_x)
    gap = float((deployed - logits["support"]).abs().max())
    assert gap < 1e-3, f"support setting differs from the deployed module by {gap}"
    assert torch.equal(logits["transductive"], learner(task.query_x))


def bench_cell(cell: str, episodes: int, settings: list[str]) -> dict[str, Any]:
    run, ways, shots = parse_cell(cell)
    recipe, loaded = load_trained(Path(run))
    algo: Any = loaded
    queries = 15 if ways == 5 else 5
    cell_recipe = recipe.model_copy(update={"test_ways": ways, "test_shots": shots,
                                            "test_queries": queries})
    tasks = split_sampler(cell_recipe, "test").fixed(episodes)
    scores: dict[str, list[float]] = {s: [] for s in settings}
    seconds = dict.fromkeys(settings, 0.0)
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(episodes):
            task = cast(Episode, tasks[i])
            learner = algo.adapt(task.support_x, task.support_y)
            logits = {}
            for name in settings:
                t0 = time.perf_counter()
                logits[name] = SCORERS[name](algo, learner, task)
                seconds[name] += time.perf_counter() - t0
                hit = (logits[name].argmax(-1) == task.query_y).double().mean()
                scores[name].append(float(hit))
            if i == 0 and "support" in logits:
                check_first(algo, recipe, learner, task, logits)
    table = summarise(scores, reference="transductive")
    return {"cell": cell, "run": run, "algorithm": recipe.algorithm, "ways": ways,
            "shots": shots, "queries": queries, "episodes": episodes,
            "trained": f"{recipe.ways}w{recipe.shots}s", "settings": table,
            "ms_per_episode": {s: 1000 * v / episodes for s, v in seconds.items()},
            "seconds": time.perf_counter() - start}


def _cell(r: dict[str, Any], s: str) -> str:
    """``"87.2 +- 1.1 (-1.5 +- 0.4)"``: accuracy and paired change, or ``-``."""
    v = r["settings"].get(s)
    if v is None:
        return "-"
    change = "" if s == "transductive" else (
        f" ({100 * v['delta']:+.1f} +- {100 * v['delta_ci95']:.1f})")
    return f"{100 * v['accuracy']:.1f} +- {100 * v['ci95']:.1f}{change}"


def _label(r: dict[str, Any]) -> str:
    """``"anil (20w1s, anil20w1s)"``: the algorithm, its training episodes, the run."""
    return f"{r['algorithm']} ({r['trained']}, {Path(r['run']).name})"


def block(rows: list[dict[str, Any]], commands: list[str]) -> str:
    """The Markdown table of ``rows`` (one per cell and run of the script): accuracy +- CI
    per setting, the change against transductive, and the scoring times."""
    settings = [s for s in SETTINGS if any(s in r["settings"] for r in rows)]
    rows = sorted(rows, key=lambda r: (r["algorithm"], r["ways"], r["shots"], -r["episodes"]))
    head = "| algorithm (trained, run) | task | episodes | " + " | ".join(settings) + " |"
    lines = ["Commands:", "", *[f"    {c}" for c in commands], "",
             f"Machine: {common.machine()}", "",
             "Accuracy % +- 95% CI over episodes; in brackets the paired change against "
             "transductive in points (+- 95% CI of the per-episode differences). '-': not "
             "scored in that row.", "", head, "|" + "---|" * (3 + len(settings))]
    for r in rows:
        lines.append(f"| {_label(r)} | {r['ways']}-way {r['shots']}-shot "
                     f"| {r['episodes']} | " + " | ".join(_cell(r, s) for s in settings)
                     + " |")
    lines += ["", "Scoring time, ms per episode (all queries of an episode, adaptation "
              "excluded; one thread on a shared, loaded machine, so rough):", "",
              "| algorithm (trained, run) | task | episodes | " + " | ".join(settings) + " |",
              "|" + "---|" * (3 + len(settings))]
    for r in rows:
        ms = r["ms_per_episode"]
        lines.append(f"| {_label(r)} | {r['ways']}-way {r['shots']}-shot | {r['episodes']}"
                     " | " + " | ".join(f"{ms[s]:.0f}" if s in ms else "-" for s in settings)
                     + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("cells", nargs="*", metavar="RUN:NwKs")
    p.add_argument("--from-rows", metavar="JSONL", help="publish the rows of earlier runs "
                   "of this script (its batchnorm_rows.jsonl) as one table instead of "
                   "scoring; --command: the commands that made them")
    p.add_argument("--command", nargs="+", default=[], help="with --from-rows: the "
                   "commands to quote")
    p.add_argument("--episodes", type=int, nargs="+", default=[200],
                   help="fixed test episodes per cell (one number, or one per cell)")
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=SETTINGS[:4],
                   help="the settings to score besides transductive and support (default: "
                   "all but online, which costs one forward pass per query)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--publish", action="store_true", help="write the rows and the "
                   "RESULTS.md block (otherwise print the block)")
    common.add_output_options(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.from_rows:
        import json

        rows = [json.loads(line) for line in Path(args.from_rows).read_text().splitlines()
                if line.strip()]
        common.publish(args, "batchnorm", "BatchNorm at deployment",
                       block(rows, args.command), rows)
        return 0
    settings = ["transductive", "support",
                *[s for s in SETTINGS[2:] if s in args.settings]]
    counts = args.episodes * len(args.cells) if len(args.episodes) == 1 else args.episodes
    rows = []
    for cell, n in zip(args.cells, counts, strict=True):
        rows.append(bench_cell(cell, n, settings))
        print(f"{cell}: " + ", ".join(
            f"{s} {100 * v['accuracy']:.2f} ({100 * v['delta']:+.2f})"
            for s, v in rows[-1]["settings"].items()) + f" [{rows[-1]['seconds']:.0f} s]",
            file=sys.stderr, flush=True)
        common.append_row(common.results_dir(args.results_dir) / "batchnorm_rows.jsonl",
                          rows[-1])
    command = "python benchmarks/batchnorm.py " + " ".join(sys.argv[1:] if argv is None
                                                           else argv)
    text = block(rows, [command])
    if args.publish:
        common.publish(args, "batchnorm", "BatchNorm at deployment", text, rows)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
