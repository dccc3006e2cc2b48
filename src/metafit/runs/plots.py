"""Plots of runs and evaluations, as PNG files (drawn by ``metafit report RUN [RUN ...]``
and ``metafit quickstart``).

- ``training.png``: meta-training loss against iteration; the validation metric (95% CI
  band) against iteration with its chance level; a run's meta-training query accuracy on
  the validation axis only where it is comparable (the run trains and validates with the
  same number of ways), else in a panel of its own, labelled with its ways.
- ``adaptation.png``: the test metric after 0..S inner steps (mean, 95% CI band), one line
  per run; a method without inner steps (``adapts_with_steps`` off) is a dashed level
  across the axis, and a report of such methods alone draws accuracy against the number
  of support shots instead.
- ``results.png``: grouped bars of test accuracy (95% CI) per task and method, with chance.

Episode figures and confusion matrices: :mod:`metafit.runs.episode_plots`,
:mod:`metafit.runs.confusion_plot`; sinusoid fits: :mod:`metafit.runs.sinusoid_plot`.
Series of a few points get markers and integer axes; runs too short to trust get a
warning banner (:mod:`metafit.runs.caveats`). Everything is drawn with matplotlib's
non-interactive Agg backend; nothing is shown.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metafit.algorithms.registry import get_algorithm
from metafit.evaluation.protocol import EvalResult
from metafit.runs.directory import RunDir
from metafit.runs.figures import (
    chance_line,
    finish,
    integer_axis,
    iteration_axes,
    pyplot,
    save_figure,
    scale_of,
    series_style,
)
from metafit.runs.sinusoid_plot import plot_sinusoid

__all__ = ["plot_training", "plot_adaptation", "plot_results", "plot_sinusoid",
           "training_figure", "adaptation_figure", "results_figure", "pyplot", "save_figure"]


@dataclass
class _Curves:
    """What ``metrics.jsonl`` of one run holds, ready to draw."""

    losses: list[dict[str, Any]]  # training records with a loss
    train: list[dict[str, Any]]  # those with an episodic query accuracy (else empty)
    val: list[dict[str, Any]]
    metric: str
    train_task: str  # "5-way 1-shot"
    val_task: str
    comparable: bool  # training query accuracy and validation accuracy share their ways
    ways: tuple[int, int] = field(default=(0, 0))  # (training, validation)


def _curves(run: RunDir) -> _Curves:
    records = run.read_metrics()
    recipe = run.read_recipe()
    train = [r for r in records if r.get("split") == "train" and "loss" in r]
    val = [r for r in records if r.get("split") == "val"]
    metric = "accuracy" if any("accuracy" in r for r in val + train) else "mse"
    episodic = get_algorithm(recipe.algorithm).episodic_training
    with_accuracy = metric == "accuracy" and episodic and train and "accuracy" in train[0]
    return _Curves(losses=train, train=train if with_accuracy else [], val=val, metric=metric,
                   train_task=f"{recipe.ways}-way {recipe.shots}-shot",
                   val_task=f"{recipe.eval_ways}-way {recipe.eval_shots}-shot",
                   comparable=recipe.ways == recipe.eval_ways,
                   ways=(recipe.ways, recipe.eval_ways))


def training_figure(runs: Mapping[str, RunDir], banner: Sequence[str] = ()) -> Any:
    """The figure of :func:`plot_training` (see there)."""
    plt = pyplot()
    curves = {label: _curves(run) for label, run in runs.items()}
    apart = any(c.train and not c.comparable for c in curves.values())
    fig, axes = plt.subplots(1, 3 if apart else 2, figsize=(16 if apart else 11, 4.2),
                             squeeze=False)
    ax_loss, ax_val = axes[0, 0], axes[0, 1]
    xs_all: list[float] = []
    for i, (label, c) in enumerate(curves.items()):
        color = f"C{i}"
        xs = [r["iteration"] for r in c.losses]
        ax_loss.plot(xs, [r["loss"] for r in c.losses], color=color, label=label,
                     **series_style(len(xs)))
        xs_all += xs
        xs_all += _draw_validation(ax_val, c, label, color)
        if c.train:
            xt = [r["iteration"] for r in c.train]
            ax_train = ax_val if c.comparable else axes[0, 2]
            ax_train.plot(xt, [100 * r["accuracy"] for r in c.train], color=color,
                          linestyle=":", alpha=0.8, label=f"{label} meta-train query "
                          f"({c.train_task})", **series_style(len(xt)))
    _chance_lines(ax_val, {c.ways[1] for c in curves.values() if c.metric == "accuracy"})
    metric = next((c.metric for c in curves.values()), "accuracy")
    ax_loss.set(xlabel="meta-training iteration", ylabel="meta-training loss",
                title="Meta-training loss")
    ax_val.set(xlabel="meta-training iteration", ylabel=f"validation {scale_of(metric)[1]}",
               title="Validation (fixed episodes, 95% CI band)")
    if apart:
        _chance_lines(axes[0, 2], {c.ways[0] for c in curves.values()
                                   if c.train and not c.comparable})
        axes[0, 2].set(xlabel="meta-training iteration", ylabel="query accuracy (%)",
                       title="Meta-training query accuracy of runs trained\nwith other "
                             "ways than validated (not comparable)")
    iteration_axes(axes[0], xs_all)
    finish(fig, banner)
    return fig


def _draw_validation(ax: Any, c: _Curves, label: str, color: str) -> list[float]:
    """The validation curve of one run with its CI band; returns its iterations."""
    if not c.val:
        return []
    scale, _ = scale_of(c.metric)
    xs = [r["iteration"] for r in c.val]
    ys = [scale * r[c.metric] for r in c.val]
    ci = [scale * (r.get("ci95") or 0.0) for r in c.val]
    task = f" ({c.val_task})" if c.metric == "accuracy" else ""
    ax.plot(xs, ys, color=color, label=f"{label} validation{task}", **series_style(len(xs)))
    ax.fill_between(xs, [y - e for y, e in zip(ys, ci, strict=True)],
                    [y + e for y, e in zip(ys, ci, strict=True)], color=color, alpha=0.15)
    return xs


def _chance_lines(ax: Any, ways: Collection[int]) -> None:
    for w in sorted(ways):
        chance_line(ax, w)


def plot_training(runs: Mapping[str, RunDir], path: str | Path,
                  banner: Sequence[str] = ()) -> Path:
    """Meta-training loss and validation metric against iteration for each run.

    Args:
        runs: label -> run directory (its ``metrics.jsonl`` and recipe are read).
        path: the PNG to write.
        banner: caveats to show across the top (:mod:`metafit.runs.caveats`).
    """
    return save_figure(training_figure(runs, banner), Path(path))


def adaptation_figure(results: Mapping[str, EvalResult], title: str = "Adaptation curve",
                      levels: Mapping[str, str] | None = None,
                      shots: Mapping[str, Mapping[int, EvalResult]] | None = None,
                      banner: Sequence[str] = ()) -> Any:
    """The figure of :func:`plot_adaptation` (see there)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    levels = dict(levels or {})
    if any(k not in levels for k in results):
        _draw_steps(ax, results, levels)
    else:
        _draw_shots(ax, results, shots or {})
        title = f"{title}\n(no inner steps: accuracy against support shots)"
    ylabel = scale_of(next(iter(results.values())).metric)[1] if results else "metric"
    ax.set(ylabel=f"test {ylabel}", title=title)
    _chance_lines(ax, {r.ways for r in results.values() if r.metric == "accuracy"})
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    finish(fig, banner)
    return fig


def _draw_steps(ax: Any, results: Mapping[str, EvalResult], levels: Mapping[str, str]
                ) -> None:
    """Lines against inner steps; the ``levels`` (label -> note) as dashed levels across."""
    all_steps: list[float] = []
    for i, (label, r) in enumerate(results.items()):
        scale, _ = scale_of(r.metric)
        ys = (torch.tensor(r.curve) * scale).numpy()
        ci = (torch.tensor(r.curve_ci95).nan_to_num(0.0) * scale).numpy()
        final = f"{ys[-1]:.1f}%" if r.metric == "accuracy" else f"{ys[-1]:.3f}"
        if label not in levels:
            steps = r.curve_steps or list(range(len(r.curve)))
            all_steps += steps
            ax.plot(steps, ys, color=f"C{i}", label=f"{label}: {final}",
                    **series_style(len(steps)))
            ax.fill_between(steps, ys - ci, ys + ci, color=f"C{i}", alpha=0.15)
        else:
            ax.axhline(ys[-1], color=f"C{i}", linestyle="--",
                       label=f"{label}: {final} ({levels[label]})")
            ax.axhspan(ys[-1] - ci[-1], ys[-1] + ci[-1], color=f"C{i}", alpha=0.12)
    integer_axis(ax, all_steps)
    ax.set_xlabel("inner (adaptation) steps on the support set")


def _draw_shots(ax: Any, results: Mapping[str, EvalResult],
                shots: Mapping[str, Mapping[int, EvalResult]]) -> None:
    """Accuracy (95% CI bars) against support shots, the evaluated shot count ringed."""
    ticks: set[int] = set()
    for i, (label, r) in enumerate(results.items()):
        scale, _ = scale_of(r.metric)
        curve = dict(shots.get(label, {})) or {r.shots: r}
        ks = sorted(curve)
        ticks.update(ks)
        ax.errorbar(ks, [scale * curve[k].mean for k in ks],
                    yerr=[0.0 if math.isnan(curve[k].ci95) else scale * curve[k].ci95
                          for k in ks], color=f"C{i}", capsize=4,
                    label=f"{label}: {scale * r.mean:.1f}% at {r.shots}-shot",
                    **series_style(len(ks)))
        ax.plot([r.shots], [scale * r.mean], marker="o", markersize=12, mfc="none",
                color=f"C{i}")
    integer_axis(ax, sorted(ticks))
    ax.set_xticks(sorted(ticks))
    ax.set_xlabel("support examples per class (shots)")


def plot_adaptation(results: Mapping[str, EvalResult], path: str | Path,
                    title: str = "Adaptation curve", levels: Mapping[str, str] | None = None,
                    shots: Mapping[str, Mapping[int, EvalResult]] | None = None,
                    banner: Sequence[str] = ()) -> Path:
    """Test metric after 0..S inner steps (mean, 95% CI band), one line per label.

    Args:
        levels: label -> note for results that are not a curve over inner steps (a method
            without inner steps: ``"no inner steps"``; a baseline), drawn as a dashed level
            with its CI band across the others' steps, the note in the legend. When every
            label is one, the figure draws accuracy against support shots instead
            (``shots``: label -> shots -> result; without it, the single result as a point
            with its 95% CI bar).
        banner: caveats to show across the top.
    """
    return save_figure(adaptation_figure(results, title, levels, shots, banner), Path(path))


def results_figure(rows: Sequence[tuple[str, str, EvalResult]],
                   title: str = "Test accuracy (95% CI)", banner: Sequence[str] = ()) -> Any:
    """The figure of :func:`plot_results` (see there)."""
    plt = pyplot()
    tasks = list(dict.fromkeys(t for _, t, _ in rows))
    methods = list(dict.fromkeys(m for m, _, _ in rows))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(8.2, 4.4))
    scale, ylabel = scale_of(rows[0][2].metric if rows else "accuracy")
    for j, method in enumerate(methods):
        xs, ys, errs = [], [], []
        for i, task in enumerate(tasks):
            for m, t, r in rows:
                if m == method and t == task:
                    xs.append(i + (j - (len(methods) - 1) / 2) * width)
                    ys.append(scale * r.mean)
                    errs.append(scale * r.ci95)
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=method, color=f"C{j}")
    _chance_lines(ax, {r.ways for _, _, r in rows if r.metric == "accuracy"})
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set(ylabel=f"test {ylabel}", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the bars
    finish(fig, banner)
    return fig


def plot_results(rows: Sequence[tuple[str, str, EvalResult]], path: str | Path,
                 title: str = "Test accuracy (95% CI)", banner: Sequence[str] = ()) -> Path:
    """Grouped bars: one group per task (e.g. "5-way 1-shot"), one bar per method, a
    dotted chance line (1/ways), and ``banner``'s caveats across the top."""
    return save_figure(results_figure(rows, title, banner), Path(path))
