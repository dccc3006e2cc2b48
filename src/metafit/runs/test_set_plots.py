"""The figures of a scored test set (``metafit evaluate ... --test T --out DIR``):
``confusion.png`` (true class against predicted class, by name) and ``reliability.png``
(the reliability diagram of Guo et al. 2017: accuracy against mean top probability per
confidence bin, the gap to the diagonal being the calibration error, with the bin counts
below). Built from a :class:`~metafit.evaluation.classification.TestSetReport`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from metafit.evaluation.classification import TestSetReport
from metafit.runs.confusion_plot import MAX_NAMED, matrix_panel
from metafit.runs.episode_plots import display_name
from metafit.runs.figures import pyplot, save_figure

__all__ = ["confusion_test_figure", "plot_test_set", "reliability_figure"]


def confusion_test_figure(report: TestSetReport, title: str = "Test set") -> Any:
    """Counts of true class (rows) against predicted class, every class named; with more
    than :data:`~metafit.runs.confusion_plot.MAX_NAMED` classes, the most confused pairs
    as bars instead."""
    plt = pyplot()
    n = len(report.classes)
    if n <= MAX_NAMED:
        side = 4.8 + 0.18 * n
        fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
        labels = [display_name(c, 30, 1) for c in report.classes]
        matrix_panel(ax, torch.tensor(report.confusion), labels, fig)
        ax.set(xlabel="predicted class", ylabel="true class")
    else:
        pairs = report.confused_pairs[::-1]
        fig, ax = plt.subplots(figsize=(8.0, 1.5 + 0.35 * max(len(pairs), 1)),
                               layout="constrained")
        ax.barh(range(len(pairs)), [p["count"] for p in pairs], color="#d62728")
        ax.set_yticks(range(len(pairs)), [f"{display_name(p['true'], 30, 1)} -> "
                                          f"{display_name(p['predicted'], 30, 1)}"
                                          for p in pairs], fontsize=7)
        ax.set_xlabel("test examples taken for that class")
    ax.set_title(f"{title}: {report.examples} examples, accuracy {100 * report.accuracy:.1f}% "
                 f"(95% CI {100 * report.accuracy_low:.1f}-{100 * report.accuracy_high:.1f}), "
                 f"macro-F1 {report.macro_f1:.3f}", fontsize=9)
    return fig


def reliability_figure(report: TestSetReport, title: str = "Test set") -> Any:
    """Accuracy against confidence per bin (bars), the diagonal of perfect calibration,
    and below, how many examples fell in each bin."""
    plt = pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5.6, 6.2), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1]},
                                      layout="constrained")
    bins = report.reliability
    width = bins[0].high - bins[0].low
    full = [b for b in bins if b.count]
    top.bar([b.low for b in full], [b.accuracy or 0.0 for b in full], width=width,
            align="edge", color="#1f77b4", edgecolor="white", label="accuracy in the bin")
    top.plot([b.confidence for b in full], [b.confidence for b in full], "o", color="#d62728",
             markersize=4, label="mean confidence in the bin")
    top.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="accuracy",
            title=f"{title}: reliability (ECE {report.ece:.3f}, {report.examples} examples)")
    top.title.set_fontsize(9)
    top.legend(fontsize=7, loc="upper left")
    bottom.bar([b.low for b in bins], [b.count for b in bins], width=width, align="edge",
               color="grey", edgecolor="white")
    bottom.set(xlim=(0, 1), xlabel="top probability (confidence)", ylabel="examples")
    return fig


def plot_test_set(report: TestSetReport, out: str | Path, title: str = "Test set"
                  ) -> list[Path]:
    """Write ``confusion.png`` and ``reliability.png`` into ``out``; returns their paths."""
    out = Path(out)
    return [save_figure(confusion_test_figure(report, title), out / "confusion.png"),
            save_figure(reliability_figure(report, title), out / "reliability.png")]
