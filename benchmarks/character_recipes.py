"""The character recipes compared at one training budget (issue 30, part 3).

Trains each candidate of ``metafit recipes recommend characters`` (the shipped
``_recommended.yaml``: the current ProtoNet with affine augmentation, the wider conv4, the
ResNet-12, Meta-Baseline's two stages) for ``--budget-minutes`` of meta-training steps
each (validation excluded; a candidate of two stages shares it as its ``budget_shares``
say, the second stage warm-started from the first's run), one after the other, then
scores every candidate's last stage (an ensemble candidate: its merged members, each
trained for its share of the budget, :meth:`~metafit.config.recommend.Candidate.member_budget`,
one after the other here, side by side on their own cores in use) on the same fixed 1-shot
episodes of the
``--split`` alphabets (``val``: the choice; ``test``: once, for the chosen one): Lake et
al.'s within-alphabet episodes by default, at 20 and 5 ways, in the deployed BatchNorm
setting (:func:`within_alphabet.score`). Every row is paired with the ``--baseline``
candidate (default: the one recommended now) on the same episodes. Writes the rows as
JSON and a Markdown block with the command into ``RESULTS.md`` (``--results``,
``--results-dir``). Training is resumed, or skipped for a finished run, when ``--out``
already holds it, so a second call with ``--split test`` scores the same runs.

    python benchmarks/character_recipes.py --budget-minutes 10 --out runs/characters_10min
    python benchmarks/character_recipes.py --budget-minutes 10 --out runs/characters_10min \\
        --split test

The winner on validation goes into ``src/metafit/recipes/_recommended.yaml``
(``recommended``, ``evidence``, ``budget_minutes``): the one place the choice is made.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path
from typing import Any, Literal, cast

import common
import torch
from within_alphabet import SCHEMES, score, table

from metafit.config.recommend import Candidate, recommendations
from metafit.config.schema import make_recipe
from metafit.runs.directory import RunDir
from metafit.runs.ensemble import merge_runs
from metafit.runs.trained import split_sampler
from metafit.training.trainer import Trainer

Split = Literal["train", "val", "test"]


def run_dirs(out: Path, candidate: Candidate) -> list[str]:
    """The run directory of each stage of ``candidate`` under ``out``."""
    if len(candidate.stages) == 1:
        return [str(out / candidate.name)]
    return [str(out / candidate.name / f"{i + 1}_{recipe}")
            for i, (recipe, _) in enumerate(candidate.stages)]


def train(candidate: Candidate, out: Path, budget_seconds: float, extra: list[str],
          checkpoint: Literal["best", "last"] = "last") -> list[dict[str, Any]]:
    """Train every stage of ``candidate`` (skipping a finished run); what each did. A
    candidate of several ``members`` trains each (seed ``i``, its share of the budget:
    ``Candidate.member_budget``) and merges their ``checkpoint``
    (:func:`~metafit.runs.ensemble.merge_runs`, skipped when done); its last entry is the
    merged run."""
    if candidate.members > 1:
        dirs = candidate.member_dirs(str(out))
        each = candidate.member_budget(budget_seconds)
        done = [train_stages(candidate, [d], each, [*extra, f"seed={i}"])[0]
                for i, d in enumerate(dirs)]
        merged = str(out / candidate.name / f"ensemble_{checkpoint}")
        if not RunDir(merged).exists():
            merge_runs(dirs, merged, checkpoint)
        return [*done, {"recipe": f"ensemble of {len(dirs)}", "run": merged,
                        "status": "complete", "iterations": sum(d["iterations"] or 0
                                                                for d in done),
                        "best_iteration": None, "train_seconds": None}]
    return train_stages(candidate, run_dirs(out, candidate), budget_seconds, extra)


def train_stages(candidate: Candidate, dirs: list[str], budget_seconds: float,
                 extra: list[str]) -> list[dict[str, Any]]:
    """Train the stages of ``candidate`` into ``dirs`` (skipping a finished run)."""
    done = []
    for recipe, path in zip(candidate.recipes(budget_seconds, dirs, extra), dirs, strict=True):
        rd = RunDir(path)
        trained = rd.read_recipe().time_budget if rd.exists() else recipe.time_budget
        if trained != recipe.time_budget:
            raise SystemExit(f"{path} was trained with time_budget={trained}, this "
                             f"comparison gives it {recipe.time_budget}: use another --out")
        if not rd.is_finished():
            start = time.perf_counter()
            Trainer(recipe, path, progress=False).fit()
            print(f"{candidate.name}: trained {recipe.name} into {path} "
                  f"({time.perf_counter() - start:.0f} s)", file=sys.stderr)
        status = rd.status()
        done.append({"recipe": recipe.name, "run": path, "status": status.get("status"),
                     "iterations": status.get("iteration"),
                     "best_iteration": status.get("best_iteration"),
                     "train_seconds": status.get("train_seconds")})
    return done


def episodes_digest(run: str, split: str, scheme: str, ways: int, episodes: int,
                    seed: int) -> str:
    """A digest of the fixed episodes ``run`` is scored on with the episode seed ``seed``
    (the dataset's example indices of every support and query set): equal digests, the
    same episodes."""
    recipe = RunDir(run).read_recipe()
    recipe = make_recipe({**recipe.model_dump(), "episode_scheme": scheme, "test_ways": ways,
                          "test_shots": 1, "seed": seed}, run)
    fixed = split_sampler(recipe, cast(Split, split)).fixed_indices(episodes)
    h = hashlib.sha1(usedforsecurity=False)
    for t in (fixed.support_x, fixed.support_y, fixed.query_x, fixed.query_y):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def block(rows: list[dict[str, Any]], baseline: str, command: str, budget: float,
          stages: dict[str, list[dict[str, Any]]], same_episodes: bool) -> str:
    """The RESULTS.md block: machine, command, what each candidate trained, the table."""
    lines = [f"{common.machine()}; load average {common.load_average()}. Command: "
             f"`{command}`. Training budget: {budget:g} minutes of meta-training steps per "
             "candidate (validation excluded; each of a candidate's K members trains for "
             "the budget over its waves), one run after the other. Deployed BatchNorm "
             "setting; mean ± 95% CI over episodes; the last column pairs each row with "
             f"`{baseline}` on the same episodes"
             + ("." if same_episodes else " (WARNING: the candidates' episodes differ: "
                "the pairing does not hold)."), "",
             "| candidate | stages: recipe (iterations, status) |", "|---|---|"]
    for name, done in stages.items():
        said = "; ".join(f"`{s['recipe']}` ({s['iterations']}, {s['status']})" for s in done)
        lines.append(f"| {name} | {said} |")
    lines += ["", *table(rows, baseline, "candidate")]
    return "\n".join(lines)


def winner(rows: list[dict[str, Any]], ways: int) -> str | None:
    """The candidate with the best within-alphabet accuracy at ``ways`` (None: no row)."""
    scored = [r for r in rows if r["ways"] == ways and r["scheme"] == "within_alphabet"]
    return max(scored, key=lambda r: r["accuracy"])["name"] if scored else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--budget-minutes", type=float, required=True,
                   help="meta-training time of each candidate (all its stages together)")
    p.add_argument("--out", required=True, help="folder of the runs (one per candidate)")
    p.add_argument("--task", default="characters", help="the task of _recommended.yaml")
    p.add_argument("--candidates", nargs="+", help="default: every candidate of the task")
    p.add_argument("--baseline", help="the candidate the others are paired with (default: "
                   "the recommended one)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of every stage of every candidate (e.g. val_every=500)")
    p.add_argument("--split", nargs="+", default=["val"], choices=["val", "test"])
    p.add_argument("--schemes", nargs="+", default=["within_alphabet"], choices=SCHEMES)
    p.add_argument("--ways", type=int, nargs="+", default=[20, 5])
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--checkpoint", default="last", choices=["best", "last"])
    p.add_argument("--threads", type=int, default=1, help="torch threads, training and "
                   "scoring")
    p.add_argument("--name", help="the RESULTS block's name (default: "
                   "character_recipes_<budget>min[_test])")
    common.add_output_options(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    task = recommendations()[args.task]
    names = args.candidates or list(task.candidates)
    unknown = [n for n in names if n not in task.candidates]
    if unknown:
        p.error(f"unknown candidates {unknown}; {args.task} has {list(task.candidates)}")
    baseline = args.baseline or (task.recommended if task.recommended in names else names[0])
    out, budget = Path(args.out), 60.0 * args.budget_minutes
    extra = [f"threads={args.threads}", *args.set]
    stages = {name: train(task.candidates[name], out, budget, extra, args.checkpoint)
              for name in names}
    seed = RunDir(stages[baseline][-1]["run"]).read_recipe().seed  # every row's episodes
    rows, digests = [], set()
    for split in args.split:
        for scheme in args.schemes:
            for ways in args.ways:
                for name in names:
                    run = stages[name][-1]["run"]
                    row = {"name": name, "budget_minutes": args.budget_minutes,
                           "stages": stages[name],
                           "episodes_digest": episodes_digest(run, split, scheme, ways,
                                                              args.episodes, seed),
                           **score([run], args.checkpoint, split, scheme, ways,
                                   args.episodes, seed=seed)}
                    digests.add((split, scheme, ways, row["episodes_digest"]))
                    rows.append(row)
                    print(f"{name} {split} {scheme} {ways}-way: "
                          f"{100 * row['accuracy']:.2f} ± {100 * row['ci95']:.2f} "
                          f"({row['seconds']} s)", file=sys.stderr)
    same = len(digests) == len({d[:3] for d in digests})
    command = "python benchmarks/character_recipes.py " + " ".join(
        sys.argv[1:] if argv is None else argv)
    name = args.name or (f"character_recipes_{args.budget_minutes:g}min"
                         + ("" if args.split == ["val"] else "_" + "_".join(args.split)))
    common.publish(args, name, f"Character recipes at {args.budget_minutes:g} minutes "
                   "(issue 30)", block(rows, baseline, command, args.budget_minutes, stages,
                                       same), rows)
    best = winner([r for r in rows if r["split"] == args.split[0]], max(args.ways))
    print(f"best on {args.split[0]} (within-alphabet, {max(args.ways)}-way): {best}; the "
          "recommendation is src/metafit/recipes/_recommended.yaml's `recommended`",
          file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
