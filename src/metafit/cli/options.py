"""Options and output shared by several verbs of the ``metafit`` command."""

from __future__ import annotations

import argparse
import sys

from metafit.algorithms.heads import CLASSIFIERS

__all__ = ["add_classifier_option", "write_line"]


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


def write_line(text: str) -> None:
    """``text`` and a line end on standard output."""
    sys.stdout.write(text + "\n")
