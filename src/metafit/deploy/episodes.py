"""The accuracy of compressed adapted models on a run's test episodes.

Each fixed test episode of the run (``split_sampler(recipe, "test")``, the episodes
``metafit evaluate`` scores) is adapted once and materialised as ``metafit adapt`` would
(:meth:`Adapter.adapt_tensors`); every variant (the float model and its compressed forms)
scores the episode's query set. Accuracies are means with 95% CIs over the episodes, and
each variant's change against the float model is the mean of the per-episode differences
(paired, so the CI of the change is much narrower than those of the accuracies).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from metafit.config.schema import Recipe
from metafit.deploy.adapted import AdaptedModel
from metafit.deploy.adapter import Adapter
from metafit.evaluation.protocol import ci95

__all__ = ["Variant", "accuracy", "describe", "episode_accuracies", "summarise"]

Variant = Callable[[AdaptedModel], AdaptedModel]
"""A compression of an adapted model (``lambda m: quantize(m)``...)."""

BATCH_BN = "algorithm (batch BN)"


def accuracy(model: AdaptedModel, x: Tensor, y: Tensor) -> float:
    """Fraction of ``x [M, *x]`` that ``model`` labels ``y [M]``."""
    return float((model.logits(x).argmax(-1) == y).float().mean())


def _ci95(values: list[float]) -> float:
    """:func:`metafit.evaluation.protocol.ci95` of a list; 0 for a single episode."""
    return ci95(torch.tensor(values, dtype=torch.float64)) if len(values) > 1 else 0.0


def summarise(scores: Mapping[str, list[float]], reference: str = "float"
              ) -> dict[str, dict[str, float]]:
    """``{variant: {accuracy, ci95, delta, delta_ci95}}`` from per-episode accuracies,
    ``delta`` being the paired change against ``reference``."""
    out = {}
    for name, acc in scores.items():
        diffs = [a - b for a, b in zip(acc, scores[reference], strict=True)]
        out[name] = {"accuracy": statistics.mean(acc), "ci95": _ci95(acc),
                     "delta": statistics.mean(diffs), "delta_ci95": _ci95(diffs)}
    return out


def episode_accuracies(adapter: Adapter, variants: Mapping[str, Variant], episodes: int,
                       recipe: Recipe | None = None, transductive: bool = True,
                       progress: bool = False) -> dict[str, list[float]]:
    """Per-episode query accuracy of the float adapted model (``"float"``) and of each
    variant, over the first ``episodes`` fixed test episodes of ``recipe`` (default: the
    adapter's; pass a copy with another ``data_root`` where the data moved). With
    ``transductive``, models with BatchNorm also report the algorithm's own scoring
    (batch statistics of the query set) as ``"algorithm (batch BN)"``. ``progress``: a
    bar over the episodes on stderr.
    """
    from tqdm.auto import tqdm

    from metafit.runs.trained import split_sampler

    scores: dict[str, list[float]] = {}
    tasks = split_sampler(recipe or adapter.recipe, "test").sample(episodes)
    for task in tqdm(tasks, desc="test episodes", unit="task", disable=not progress,
                     leave=False):
        names = [str(i) for i in range(int(task.support_y.max()) + 1)]
        model = adapter.adapt_tensors(task.support_x, task.support_y, names)
        models = {"float": model, **{n: make(model) for n, make in variants.items()}}
        if transductive and model.arch["batch_norm"] != "none":
            models[BATCH_BN] = adapter.adapt_tensors(task.support_x, task.support_y, names,
                                                     batch_norm="batch")
        for name, m in models.items():
            scores.setdefault(name, []).append(accuracy(m, task.query_x, task.query_y))
    return scores


def describe(row: Mapping[str, Any]) -> str:
    """``"86.20 +- 0.73% (change -0.32 +- 0.18 points)"``."""
    return (f"{100 * row['accuracy']:.2f} +- {100 * row['ci95']:.2f}% (change "
            f"{100 * row['delta']:+.2f} +- {100 * row['delta_ci95']:.2f} points)")
