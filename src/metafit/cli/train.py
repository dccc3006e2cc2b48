"""The meta-training verbs: ``quickstart`` (:mod:`metafit.cli.quickstart`), ``train``, and
``ensemble`` (trained runs merged into one, :mod:`metafit.runs.ensemble`)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from metafit.cli.options import add_json_option, add_recipe_arguments, add_verb, show_progress
from metafit.config.recipe import load_recipe

__all__ = ["add_ensemble_parser", "add_quickstart_parser", "add_train_parser"]

log = logging.getLogger("metafit")


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from metafit.cli.quickstart import quickstart

    results = quickstart(args.out, size=args.size, progress=show_progress(args),
                         recipe=args.recipe, data_root=args.data_root)
    report = f"{args.out}/report/results.md"
    if args.json:
        from metafit.cli.results import emit

        emit("quickstart", {"out": str(args.out), "report": report,
                            **{k: v for k, v in results.items() if k != "table"}})
        return 0
    sys.stdout.write("\n" + results["table"] + "\n\n")
    sys.stdout.write(f"finished in {results['total_seconds']} s; report: "
                     f"{args.out}/report/results.md (plots: {', '.join(results['plots'])})\n")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from metafit.distributed import init_distributed, shutdown
    from metafit.training.trainer import make_trainer

    recipe = load_recipe(args.recipe, args.overrides)
    out = args.out or f"runs/{recipe.name}"
    ctx = init_distributed(recipe.device)  # under torchrun: join the process group
    if not ctx.is_main:
        log.setLevel(logging.WARNING)  # rank 0 reports progress for every rank
    try:
        state = make_trainer(recipe, out, progress=show_progress(args), dist=ctx).fit()
    finally:
        shutdown(ctx)
    if ctx.is_main and args.json:
        from metafit.cli.results import emit
        from metafit.runs.directory import RunDir
        from metafit.tuning.setup import objective_metric

        emit("train", {"run": str(out), "recipe": recipe.name, "algorithm": recipe.algorithm,
                       "status": RunDir(out).status().get("status", "missing"),
                       "iteration": state.iteration,
                       "metric": objective_metric(recipe).name,
                       "best_score": state.best_score,
                       "best_iteration": None if state.best_score is None
                       else state.best_iteration,
                       "world_size": ctx.world_size})
    elif ctx.is_main:
        best = "" if state.best_score is None else \
            f", best validation {state.best_score:.4g} at iteration {state.best_iteration}"
        processes = f" on {ctx.world_size} processes" if ctx.enabled else ""
        sys.stdout.write(f"trained {recipe.name} to iteration {state.iteration}{best}"
                         f"{processes}\nrun directory: {out}\n")
    return 0


def add_quickstart_parser(sub: Any) -> None:
    """Add ``quickstart`` to the subparsers ``sub``."""
    p = add_verb(sub, "quickstart", "meta-train and compare MAML, ProtoNet and baselines on "
                 "the built-in Glyphs data (a few minutes, no download)", _cmd_quickstart)
    p.add_argument("recipe", nargs="?", help="optional: take the dataset from this recipe "
                   "(name or YAML) instead of the built-in Glyphs")
    p.add_argument("--data-root", help="data directory (Omniglot zips, or the recipe's data)")
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--size", default="default", choices=["default", "tiny"],
                   help="tiny: a smoke run of about 12 s on 2 CPU cores (4 iterations per "
                   "method, 10 test episodes: the numbers mean nothing); default: a few "
                   "minutes")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_json_option(p, "the results (every method on every task)")


def add_train_parser(sub: Any) -> None:
    """Add ``train`` to the subparsers ``sub``."""
    p = add_verb(sub, "train", "meta-train a recipe into a run directory (resumable)",
                 _cmd_train)
    add_recipe_arguments(p, "recipe name (see `metafit recipes`) or YAML path",
                         "key=value overrides, e.g. inner_steps=5")
    p.add_argument("--out", help="run directory (default runs/RECIPE); an unfinished run "
                   "there is resumed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_json_option(p, "the run's final state")


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from metafit.runs.ensemble import merge_runs

    recipe = merge_runs(args.runs, args.out, args.checkpoint, args.finished_only)
    members = [str(Path(run).resolve()) for run in args.runs]
    if args.json:
        from metafit.cli.results import emit

        emit("ensemble", {"run": str(Path(args.out).resolve()), "members": members,
                          "checkpoint": args.checkpoint, "hidden": recipe.hidden,
                          "conv_groups": recipe.conv_groups})
        return 0
    sys.stdout.write(f"{args.out}: the ensemble of {len(members)} runs (conv4, "
                     f"{recipe.hidden} filters in {recipe.conv_groups} groups); adapt, "
                     f"evaluate and serve it as any run\n")
    return 0


def add_ensemble_parser(sub: Any) -> None:
    """Add ``ensemble`` to the subparsers ``sub``."""
    p = add_verb(sub, "ensemble", "merge trained conv4 ProtoNet runs into one run that "
                 "predicts as their ensemble", _cmd_ensemble)
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run directories of "
                   "one architecture (metafit.runs.ensemble)")
    p.add_argument("--out", required=True, help="the merged run directory (new or empty)")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="the members' checkpoint to merge (default: best)")
    p.add_argument("--finished-only", action="store_true",
                   help="refuse a member whose training has not finished (crashed, killed "
                   "or still running); without it such a member merges with a warning")
    add_json_option(p, "the merged run")
