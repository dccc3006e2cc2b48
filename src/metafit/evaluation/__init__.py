"""Evaluation: the episode protocol with confidence intervals, the feature cache, and
scoring an adapted model on a labelled test set."""

from metafit.evaluation.protocol import EvalResult, evaluate

__all__ = ["EvalResult", "evaluate"]
