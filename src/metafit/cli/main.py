"""The ``metafit`` command line.

Each verb is a small function taking the parsed arguments; the work itself lives in the
library. Errors the user can fix (bad recipe keys, missing data, impossible episodes) are
printed as one line ``metafit: error: ...`` with exit status 2, never as a traceback
(``METAFIT_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from metafit._version import __version__
from metafit.config.recipe import RecipeError, list_recipes, load_recipe
from metafit.config.schema import recipe_to_yaml
from metafit.deploy.commands import add_classifier_option
from metafit.deploy.commands import add_parsers as add_deploy_parsers

__all__ = ["main", "build_parser"]

log = logging.getLogger("metafit")

Command = Callable[[argparse.Namespace], int]


def _cmd_recipes(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            raise RecipeError("`metafit recipes show` needs a recipe name")
        recipe = load_recipe(args.name, args.overrides)
        sys.stdout.write(recipe_to_yaml(recipe))
        return 0
    if args.action not in (None, "list"):
        raise RecipeError(f"unknown action '{args.action}': use `recipes` or `recipes show NAME`")
    width = max(len(n) for n in list_recipes())
    for name in list_recipes():
        recipe = load_recipe(name)
        sys.stdout.write(f"{name:<{width}}  {recipe.description}\n")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from metafit.data.splits import describe_dataset

    recipe = load_recipe(args.recipe, args.overrides)
    for line in describe_dataset(recipe):
        sys.stdout.write(line + "\n")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from metafit.distributed import init_distributed, shutdown
    from metafit.training.trainer import Trainer

    recipe = load_recipe(args.recipe, args.overrides)
    out = args.out or f"runs/{recipe.name}"
    ctx = init_distributed(recipe.device)  # under torchrun: join the process group
    if not ctx.is_main:
        log.setLevel(logging.WARNING)  # rank 0 reports progress for every rank
    try:
        state = Trainer(recipe, out, progress=not args.no_progress, dist=ctx).fit()
    finally:
        shutdown(ctx)
    if ctx.is_main:
        best = "" if state.best_score is None else \
            f", best validation {state.best_score:.4g} at iteration {state.best_iteration}"
        processes = f" on {ctx.world_size} processes" if ctx.enabled else ""
        sys.stdout.write(f"trained {recipe.name} to iteration {state.iteration}{best}"
                         f"{processes}\nrun directory: {out}\n")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from metafit.distributed import init_distributed, shutdown
    from metafit.runs.trained import evaluate_run

    ctx = init_distributed("cpu")  # under torchrun: episodes split across the processes
    try:
        result = evaluate_run(args.run, split=args.split, episodes=args.episodes,
                              which=args.checkpoint, steps=args.steps, dist=ctx,
                              cache_features=not args.no_feature_cache,
                              classifier=args.classifier, penalty=args.classifier_penalty)
    finally:
        shutdown(ctx)
    if not ctx.is_main:
        return 0
    if args.json:
        sys.stdout.write(json.dumps(result.to_dict()) + "\n")
        return 0
    penalty = args.classifier_penalty
    where = ", ".join([args.split, args.checkpoint, *filter(None, [
        args.classifier, None if penalty is None else f"penalty {penalty:g}"])])
    sys.stdout.write(f"{args.run} [{where}]: {result.summary()}\n")
    scale = 100.0 if result.metric == "accuracy" else 1.0
    curve = ", ".join(f"{s}: {v * scale:.2f}"
                      for s, v in zip(result.curve_steps, result.curve, strict=True))
    sys.stdout.write(f"after 0..{result.steps} inner steps: {curve}\n"
                     f"BatchNorm: batch statistics, transductive over each query set\n")
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from metafit.cli.quickstart import quickstart

    results = quickstart(args.out, size=args.size, progress=not args.no_progress,
                         recipe=args.recipe, data_root=args.data_root)
    sys.stdout.write("\n" + results["table"] + "\n\n")
    sys.stdout.write(f"finished in {results['total_seconds']} s; report: "
                     f"{args.out}/report/results.md (plots: {', '.join(results['plots'])})\n")
    return 0


def _bench_options(parser: argparse.ArgumentParser) -> None:
    from metafit.cli.bench import build_parser as bench_parser

    bench_parser(parser)


def _cmd_bench(args: argparse.Namespace) -> int:
    from metafit.cli.bench import run

    return run(args)


def _cmd_tune(args: argparse.Namespace) -> int:
    from metafit.tuning.report import write_report
    from metafit.tuning.space import parse_search_space
    from metafit.tuning.study import TuneOptions, load_existing_study, tune

    recipe = load_recipe(args.recipe, args.overrides)
    parse_search_space(recipe)  # a bad space fails here, before any storage or trial
    name = args.study or recipe.name
    opts = TuneOptions(out=args.out or f"runs/tune/{name}", trials=args.trials,
                       storage=args.storage, study=name, timeout=args.timeout,
                       sampler=args.sampler, pruner=args.pruner,
                       trial_iterations=args.trial_iterations, jobs=args.jobs,
                       seed=args.seed)
    if args.trials is not None or not args.report:
        result = tune(recipe, opts)
        best = ("no complete trial yet" if result.best_trial is None else
                f"best trial {result.best_trial}: {result.best_value:.6g} with "
                + ", ".join(f"{k}={v}" for k, v in result.best_params.items()))
        sys.stdout.write(f"study '{result.study}' ({result.storage}): {result.finished} "
                         f"finished trials ({result.complete} complete, {result.pruned} "
                         f"pruned), {result.failed} failed; {best}\n")
        if result.best_recipe:
            sys.stdout.write(f"best recipe: {result.best_recipe} "
                             f"(metafit train {result.best_recipe})\n")
    if args.report:
        for f in write_report(load_existing_study(recipe, opts), f"{opts.out}/report"):
            sys.stdout.write(f"wrote {f}\n")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from metafit.runs.report import report_runs

    files = report_runs(args.runs, out=args.out, episodes=args.episodes, split=args.split)
    for f in files:
        sys.stdout.write(f"wrote {f}\n")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    try:
        from metafit.server import ServerSettings, load_api_keys, serve
    except ImportError as e:
        raise ValueError(f"`metafit serve` needs the serve extra: pip install "
                         f"'metafit[serve]' ({e})") from e

    settings = ServerSettings(
        target=Path(args.target), state_dir=args.state_dir and Path(args.state_dir),
        model_dir=args.model and Path(args.model), checkpoint=args.checkpoint,
        classifier=args.classifier, classifier_penalty=args.classifier_penalty,
        api_keys=load_api_keys(args.api_key_file), max_body_bytes=args.max_body_bytes,
        max_examples=args.max_examples, max_inputs=args.max_inputs, max_steps=args.max_steps,
        steps=args.steps, workers=args.workers, queue=args.queue, cache_size=args.cache_size,
        max_image_pixels=args.max_image_pixels, max_request_pixels=args.max_request_pixels,
        header_timeout=args.header_timeout, body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout, max_connections=args.max_connections)
    serve(settings, host=args.host, port=args.port, insecure_no_auth=args.insecure_no_auth,
          threads=args.threads)
    return 0


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_OR_MODEL", help="a run directory (adapts to posted "
                   "support sets) or an adapted model directory (predicts only)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1; another needs API keys or --insecure-no-auth)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free)")
    p.add_argument("--api-key-file", help="file of API keys, one per line (also: "
                   "METAFIT_API_KEYS=k1,k2); requests need 'Authorization: Bearer KEY' or "
                   "'X-API-Key: KEY'")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow serving without "
                   "API keys on a non-loopback address")
    p.add_argument("--state-dir", help="where adaptations are kept (default RUN/adaptations)")
    p.add_argument("--model", help="an adapted model for POST /v1/predict next to a run")
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    add_classifier_option(p, "fit this head to posted support sets instead of the recipe's")
    p.add_argument("--steps", type=int, help="inner steps when a request names none "
                   "(default: the run's evaluation steps)")
    p.add_argument("--max-steps", type=int, default=500, help="most inner steps a request "
                   "may ask for (default 500)")
    p.add_argument("--workers", type=int, default=1, help="adaptations running at once "
                   "(default 1)")
    p.add_argument("--queue", type=int, default=8, help="adaptations waiting for a worker; "
                   "beyond: 503 + Retry-After (default 8)")
    p.add_argument("--max-body-bytes", type=int, default=10 * 2**20, help="larger request "
                   "bodies get 413 (default 10 MiB)")
    p.add_argument("--max-examples", type=int, default=1000, help="most support examples "
                   "per adaptation; more: 422 (default 1000)")
    p.add_argument("--max-inputs", type=int, default=256, help="most inputs per prediction "
                   "request; more: 422 (default 256)")
    p.add_argument("--cache-size", type=int, default=16, help="adapted models held in "
                   "memory (default 16; a text model holds a copy of its encoder)")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="most pixels "
                   "(width x height, read from the header before decoding) of one posted "
                   "image; more: 422 (default 16777216, 4096x4096)")
    p.add_argument("--max-request-pixels", type=int, default=4 * 4096 * 4096, help="most "
                   "pixels of all the images of one request; more: 422 (default 67108864)")
    p.add_argument("--header-timeout", type=float, default=10.0, help="seconds a connection "
                   "may take to send a request's headers; then it is closed (default 10)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request may "
                   "take to send its body; then 408 (default 30)")
    p.add_argument("--keep-alive-timeout", type=int, default=5, help="seconds an idle "
                   "kept-alive connection is held (default 5)")
    p.add_argument("--max-connections", type=int, default=1000, help="connections and "
                   "requests at once; a request beyond gets 503 (default 1000)")
    p.add_argument("--threads", type=int, help="torch threads per call (default: cores / "
                   "(workers + 1))")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every verb (also used to generate the docs)."""
    parser = argparse.ArgumentParser(
        prog="metafit",
        description="Meta-learning-based fine-tuning: meta-train across tasks, adapt to a new "
        "task from a few labelled examples, evaluate with confidence intervals.",
    )
    parser.add_argument("--version", action="version", version=f"metafit {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("quickstart", help="meta-train and compare MAML, ProtoNet and "
                       "baselines on the built-in Glyphs data (a few minutes, no download)")
    p.add_argument("recipe", nargs="?", help="optional: take the dataset from this recipe "
                   "(name or YAML) instead of the built-in Glyphs")
    p.add_argument("--data-root", help="data directory (Omniglot zips, or the recipe's data)")
    p.add_argument("--out", default="runs/quickstart", help="output directory")
    p.add_argument("--size", default="default", choices=["default", "tiny"],
                   help="tiny: a seconds-long smoke run")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("recipes", help="list the shipped recipes, or show one resolved")
    p.add_argument("action", nargs="?", choices=["list", "show"], help="list (default) | show")
    p.add_argument("name", nargs="?", help="recipe name (with show)")
    p.add_argument("overrides", nargs="*", help="key=value overrides (with show)")
    p.set_defaults(func=_cmd_recipes)

    p = sub.add_parser("train", help="meta-train a recipe into a run directory (resumable)")
    p.add_argument("recipe", help="recipe name (see `metafit recipes`) or YAML path")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. inner_steps=5")
    p.add_argument("--out", help="run directory (default runs/RECIPE); an unfinished run "
                   "there is resumed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run on fixed test episodes (mean, 95%% CI)")
    p.add_argument("run", help="run directory written by `metafit train`")
    p.add_argument("--episodes", type=int, help="number of episodes (default: the recipe's)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--checkpoint", default="best", choices=["best", "last"])
    p.add_argument("--steps", type=int, help="inner steps at test time (default: recipe's)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-feature-cache", action="store_true",
                   help="run the body in every episode instead of embedding each distinct "
                        "example once (same result, slower; see metafit.evaluation.feature_cache)")
    add_classifier_option(p, "classify with this head instead of the recipe's")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("report", help="plot runs: training and validation curves, "
                       "adaptation curves, an example test episode (or sinusoid fits)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several: "
                   "curves overlaid)")
    p.add_argument("--out", help="report directory (default RUN/report for one run)")
    p.add_argument("--episodes", type=int, default=100,
                   help="test episodes for the adaptation curve (default 100)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("tune", help="search hyperparameters and architecture with Optuna "
                       "over the recipe's search: section (resumable study in SQLite)")
    p.add_argument("recipe", help="recipe name or YAML path with a search: section")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    p.add_argument("--trials", type=int, help="finished trials the study should hold; a "
                   "rerun continues to this total (grid: default the grid's size)")
    p.add_argument("--storage", help="SQLAlchemy URL or SQLite path (default "
                   "sqlite:///OUT/study.db); e.g. postgresql://... for a cluster")
    p.add_argument("--study", help="study name (default: the recipe's name)")
    p.add_argument("--timeout", type=float, help="seconds after which no trial starts")
    p.add_argument("--sampler", default="tpe", choices=["tpe", "random", "grid"])
    p.add_argument("--pruner", default="median", choices=["median", "hyperband", "none"])
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
    p.set_defaults(func=_cmd_tune)

    p = sub.add_parser("bench", help="meta-training speed vs higher, TorchOpt and a plain "
                       "loop on identical weights and data (tasks/s, memory, agreement)")
    _bench_options(p)
    p.set_defaults(func=_cmd_bench)

    add_deploy_parsers(sub)  # adapt, predict, compress, export

    p = sub.add_parser("serve", help="serve a run over HTTP: adapt to posted support sets, "
                       "predict, with API keys and limits (serve extra)")
    _serve_options(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("data", help="load a recipe's dataset and describe its splits")
    p.add_argument("recipe", help="recipe name or YAML path")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data_root=DIR")
    p.set_defaults(func=_cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metafit`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 0
    code = _run(args.func, args)
    from metafit.distributed import exit_after_shutdown

    exit_after_shutdown(code)  # a torchrun worker ends here (see its docstring)
    return code


def _run(func: Command, args: argparse.Namespace) -> int:
    """``func(args)``, with the command line's messages for bad input and Ctrl-C."""
    try:
        return func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:
        if os.environ.get("METAFIT_DEBUG"):
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        sys.stderr.write(f"metafit: error: {message}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("metafit: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
