"""What the verbs of the ``metafit`` command share: how a verb is added, common arguments
and options, output."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any

from metafit.config.schema import CLASSIFIERS

__all__ = ["add_checkpoint_option", "add_classifier_option", "add_json_option", "add_model_verb",
           "add_progress_option", "add_recipe_arguments", "add_threads_option", "add_verb",
           "apply_threads", "show_progress", "write_line"]


def add_verb(sub: Any, name: str, summary: str, command: Callable[[argparse.Namespace], int]
             ) -> argparse.ArgumentParser:
    """Add verb ``name`` to the subparsers ``sub`` (``summary``: its line in ``metafit
    --help``) and return its parser, which runs ``command`` on the parsed arguments."""
    p: argparse.ArgumentParser = sub.add_parser(name, help=summary)
    p.set_defaults(func=command)
    # also after the verb (`metafit train -v ...`); SUPPRESS keeps `metafit -v train` on
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="debug logging")
    return p


def add_model_verb(sub: Any, name: str, summary: str,
                   command: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """:func:`add_verb` for a verb on an adapted model directory: its first argument is
    the positional ``model``."""
    p = add_verb(sub, name, summary, command)
    p.add_argument("model", help="model directory written by `metafit adapt`")
    return p


def add_json_option(p: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json``: print ``what`` as one line of JSON on standard output instead of text
    (its schema: :mod:`metafit.cli.results`, docs/cli-json.md)."""
    p.add_argument("--json", action="store_true",
                   help=f"print {what} as one line of JSON (schema: docs/cli-json.md); logs "
                   "and progress stay on stderr")


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bar (there is none either when stderr is not a
    terminal: see :func:`show_progress`)."""
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (there is none either when stderr is not a terminal)")


def show_progress(args: argparse.Namespace) -> bool:
    """Whether the verb shows progress bars: not ``--no-progress``, and stderr is a
    terminal (a log file or a pipe gets the log lines only)."""
    return not getattr(args, "no_progress", False) and sys.stderr.isatty()


def add_checkpoint_option(p: argparse.ArgumentParser) -> None:
    """``--checkpoint best|last``: which checkpoint of a run directory to load."""
    p.add_argument("--checkpoint", default="best", choices=["best", "last"],
                   help="the run's checkpoint: best (the best validation score, default) or "
                   "last")


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """``--threads N``: torch's intra-op threads for the verb's work (default: torch's)."""
    p.add_argument("--threads", type=int, default=None, dest="torch_threads",
                   help="torch threads for this command (default: torch's, one per core)")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's thread count from ``--threads``, if the verb has it and it was given.

    Raises:
        ValueError: not a positive count.
    """
    threads = getattr(args, "torch_threads", None)
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be a positive count, got {threads}")
    import torch

    torch.set_num_threads(threads)


def add_recipe_arguments(p: argparse.ArgumentParser, recipe: str, overrides: str) -> None:
    """The positional ``recipe`` (a name or a YAML path) and its ``key=value``
    ``overrides`` (any number), as :func:`metafit.config.recipe.load_recipe` takes them;
    ``recipe`` and ``overrides``: their help."""
    p.add_argument("recipe", help=recipe)
    p.add_argument("overrides", nargs="*", help=overrides)


def add_classifier_option(p: argparse.ArgumentParser, what: str) -> None:
    """``--classifier`` and ``--classifier-penalty``: the test-time head of ProtoNet,
    FineTune and linear_probe runs and its penalty instead of the recipe's
    (:mod:`metafit.algorithms.heads`); ``what``: what the command does with the head."""
    p.add_argument("--classifier", choices=list(CLASSIFIERS),
                   help=f"protonet, finetune, linear_probe runs: {what} (logistic: L-BFGS "
                        "logistic regression on normalised features)")
    p.add_argument("--classifier-penalty", type=float, metavar="PENALTY",
                   help="the logistic head's L2 penalty on its weights instead of the "
                        "recipe's classifier_penalty (default 1e-4)")


#: What a terminal acts on instead of showing: C0 controls but tab and newline (``\\r``
#: overwrites a row, ``\\x1b[`` and ``\\x1b]`` sequences clear the screen or retitle the
#: window), DEL, C1 controls, and the bidirectional marks and overrides that reorder what
#: is shown ("Trojan Source").
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e"
                          "\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every character of :data:`_UNPRINTABLE` written as its escape
    (``\\x1b``, ``\\r``, ``\\u202e``): labels, file names and sentences come from other
    people's data and reach the user's terminal."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"),
                            text)


def one_line(text: object) -> str:
    """``text`` (a label, a file name) for one cell of a line: :func:`printable`, and its
    line breaks and tabs escaped too, so that it cannot split or fake a row."""
    return printable(str(text)).replace("\n", "\\n").replace("\t", "\\t")


def write_line(text: str) -> None:
    """``text`` and a line end on standard output, control characters escaped
    (:func:`printable`)."""
    sys.stdout.write(printable(text) + "\n")
