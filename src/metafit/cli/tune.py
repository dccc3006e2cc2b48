"""The ``tune`` verb: a hyperparameter study over a recipe's ``search:`` section."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from metafit.cli.options import (
    add_json_option,
    add_progress_option,
    add_recipe_arguments,
    add_verb,
    show_progress,
)
from metafit.config.recipe import load_recipe

__all__ = ["add_tune_parser"]


def _cmd_tune(args: argparse.Namespace) -> int:
    from metafit.tuning.report import write_report
    from metafit.tuning.setup import load_existing_study
    from metafit.tuning.space import parse_search_space
    from metafit.tuning.study import TuneOptions, summarize, tune

    recipe = load_recipe(args.recipe, args.overrides)
    parse_search_space(recipe)  # a bad space fails here, before any storage or trial
    name = args.study or recipe.name
    opts = TuneOptions(out=args.out or f"runs/tune/{name}", trials=args.trials,
                       storage=args.storage, study=name, timeout=args.timeout,
                       sampler=args.sampler, pruner=args.pruner,
                       trial_iterations=args.trial_iterations, jobs=args.jobs,
                       seed=args.seed, progress=show_progress(args))
    result, files = None, []
    run_trials = args.trials is not None or not args.report  # --report alone: no trials
    if run_trials:
        result = tune(recipe, opts)
    if args.report:
        study = load_existing_study(recipe, opts)
        files = write_report(study, f"{opts.out}/report")
        if result is None:  # report only: the study as it is
            best_yaml = Path(opts.out) / "best.yaml"
            result = summarize(study, opts, best_yaml if best_yaml.is_file() else None)
    assert result is not None  # tune() ran, or --report summarised the study
    if args.json:
        from metafit.cli.results import emit

        emit("tune", {**asdict(result), "report_files": [str(f) for f in files]})
        return 0
    if run_trials:
        best = ("no complete trial yet" if result.best_trial is None else
                f"best trial {result.best_trial}: {result.best_value:.6g} with "
                + ", ".join(f"{k}={v}" for k, v in result.best_params.items()))
        sys.stdout.write(f"study '{result.study}' ({result.storage}): {result.finished} "
                         f"finished trials ({result.complete} complete, {result.pruned} "
                         f"pruned), {result.failed} failed; {best}\n")
        if result.best_recipe:
            sys.stdout.write(f"best recipe: {result.best_recipe} "
                             f"(metafit train {result.best_recipe})\n")
    for f in files:
        sys.stdout.write(f"wrote {f}\n")
    return 0


def add_tune_parser(sub: Any) -> None:
    """Add ``tune`` to the subparsers ``sub``."""
    p = add_verb(sub, "tune", "search hyperparameters and architecture with Optuna over the "
                 "recipe's search: section (resumable study in SQLite)", _cmd_tune)
    add_recipe_arguments(p, "recipe name or YAML path with a search: section",
                         "key=value overrides of the recipe")
    p.add_argument("--trials", type=int, help="finished trials the study should hold; a "
                   "rerun continues to this total (grid: default the grid's size)")
    p.add_argument("--storage", help="SQLAlchemy URL or SQLite path (default "
                   "sqlite:///OUT/study.db); e.g. postgresql://... for a cluster")
    p.add_argument("--study", help="study name (default: the recipe's name)")
    p.add_argument("--timeout", type=float, help="seconds after which no trial starts")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid"],
                   help="how trials pick values: TPE (default), random search, or every point "
                   "of the grid (int and categorical keys, and uniform ranges with a step)")
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"],
                   help="how unpromising trials stop early (default: median; none: never)")
    p.add_argument("--trial-iterations", type=int, help="meta-training iterations per "
                   "trial (default: the recipe's); best.yaml keeps the recipe's")
    p.add_argument("--jobs", type=int, default=1, help="parallel trial processes sharing "
                   "the storage (default 1)")
    p.add_argument("--seed", type=int, help="sampler seed (default: the recipe's seed)")
    p.add_argument("--out", help="directory of trial runs, best.yaml and report/ (default "
                   "runs/tune/STUDY)")
    p.add_argument("--report", action="store_true", help="write report/: trials.csv, "
                   "optimisation history, parameter importances, intermediate values "
                   "(alone: report only, no new trials)")
    add_progress_option(p)
    add_json_option(p, "the study's counts and best trial")
