"""Plots of runs and evaluations, as PNG files (drawn by ``metafit report RUN [RUN ...]``
and ``metafit quickstart``).

- ``training.png``: meta-training loss against iteration, and the validation metric (with
  its 95% CI band) against iteration, one colour per run.
- ``adaptation.png``: the test metric after 0..S inner steps (mean and 95% CI band over
  the fixed test episodes), one line per run: how much each method gains from adapting.
- ``episode.png`` (image classification): one fixed test episode, the support set with
  its class names, and query images titled with the true and the predicted label (green:
  right, red: wrong).
- ``sinusoid.png`` (regression): the predicted curve after 0, 1 and 10 inner steps
  against the true sine and the support points, as in Finn et al. 2017, Figure 2.

Everything is drawn with matplotlib's non-interactive Agg backend; nothing is shown.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metafit.algorithms.registry import get_algorithm
from metafit.data.sampler import EpisodeSampler
from metafit.evaluation.protocol import EvalResult
from metafit.runs.directory import RunDir

__all__ = ["plot_training", "plot_adaptation", "plot_episode", "plot_sinusoid",
           "plot_results", "pyplot", "save_figure"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, **savefig: Any) -> Path:
    """Write the figure atomically (a crash never leaves half a PNG); ``savefig``: extra
    options of ``Figure.savefig`` (e.g. ``bbox_inches="tight"``)."""
    import io

    from metafit.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, **savefig)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, "accuracy (%)") if metric == "accuracy" else (1.0, "MSE")


def plot_training(runs: Mapping[str, RunDir], path: str | Path) -> Path:
    """Meta-training loss and validation metric against iteration for each run.

    Args:
        runs: label -> run directory (its ``metrics.jsonl`` is read).
        path: the PNG to write.
    """
    plt = pyplot()
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    val_label = "validation"
    for i, (label, run) in enumerate(runs.items()):
        color = f"C{i}"
        records = run.read_metrics()
        train = [r for r in records if r.get("split") == "train" and "loss" in r]
        val = [r for r in records if r.get("split") == "val"]
        if train:
            ax_loss.plot([r["iteration"] for r in train], [r["loss"] for r in train],
                         color=color, label=label)
        if val:
            metric = "accuracy" if "accuracy" in val[0] else "mse"
            scale, val_label = _scale(metric)
            xs = [r["iteration"] for r in val]
            ys = [scale * r[metric] for r in val]
            ci = [scale * (r.get("ci95") or 0.0) for r in val]
            ax_val.plot(xs, ys, color=color, marker="o", label=f"{label} (validation)")
            ax_val.fill_between(xs, [y - c for y, c in zip(ys, ci, strict=True)],
                                [y + c for y, c in zip(ys, ci, strict=True)], color=color,
                                alpha=0.15)
            episodic = get_algorithm(run.read_recipe().algorithm).episodic_training
            if metric == "accuracy" and train and "accuracy" in train[0] and episodic:
                ax_val.plot([r["iteration"] for r in train],
                            [100 * r["accuracy"] for r in train], color=color,
                            linestyle=":", alpha=0.7, label=f"{label} (meta-train query)")
    ax_loss.set(xlabel="meta-training iteration", ylabel="meta-training loss",
                title="Meta-training loss")
    ax_val.set(xlabel="meta-training iteration", ylabel=val_label,
               title="Validation (fixed episodes, 95% CI band)")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def plot_adaptation(results: Mapping[str, EvalResult], path: str | Path,
                    title: str = "Adaptation curve") -> Path:
    """Test metric after 0..S inner steps (mean, 95% CI band), one line per label."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ylabel = "metric"
    for i, (label, r) in enumerate(results.items()):
        scale, ylabel = _scale(r.metric)
        steps = r.curve_steps or list(range(len(r.curve)))
        ys = (torch.tensor(r.curve) * scale).numpy()
        ci = (torch.tensor(r.curve_ci95).nan_to_num(0.0) * scale).numpy()
        style = {"marker": "o"} if len(steps) > 1 else {"marker": "s", "markersize": 8}
        final = f"{ys[-1]:.1f}%" if r.metric == "accuracy" else f"{ys[-1]:.3f}"
        ax.plot(steps, ys, color=f"C{i}", label=f"{label}: {final}", **style)
        ax.fill_between(steps, ys - ci, ys + ci, color=f"C{i}", alpha=0.15)
    ax.set(xlabel="inner (adaptation) steps on the support set",
           ylabel=f"test {ylabel}", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def plot_results(rows: Sequence[tuple[str, str, EvalResult]], path: str | Path,
                 title: str = "Test accuracy (95% CI)") -> Path:
    """Grouped bars: one group per task (e.g. "5-way 1-shot"), one bar per method."""
    plt = pyplot()
    tasks = list(dict.fromkeys(t for _, t, _ in rows))
    methods = list(dict.fromkeys(m for m, _, _ in rows))
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    scale, ylabel = _scale(rows[0][2].metric if rows else "accuracy")
    for j, method in enumerate(methods):
        xs, ys, errs = [], [], []
        for i, task in enumerate(tasks):
            for m, t, r in rows:
                if m == method and t == task:
                    xs.append(i + (j - (len(methods) - 1) / 2) * width)
                    ys.append(scale * r.mean)
                    errs.append(scale * r.ci95)
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=method, color=f"C{j}")
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set(ylabel=f"test {ylabel}", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, Path(path))


def _image(x: Tensor) -> Tensor:
    """``[C, H, W]`` float in 0..1 -> ``[H, W]`` or ``[H, W, C]`` for imshow."""
    x = x.detach().float().cpu()
    return x[0] if x.shape[0] == 1 else x.permute(1, 2, 0).clamp(0, 1)


def plot_episode(algo: Any, episode: Any, class_names: Sequence[str], path: str | Path,
                 steps: int | None = None, max_queries: int = 10,
                 title: str = "One test episode") -> Path:
    """Support images (with class names) and query images with true / predicted labels.

    Args:
        algo: a trained algorithm (``adapt(support_x, support_y, steps)``).
        episode: an :class:`~metafit.episodes.Episode` of images ``[B, C, H, W]``.
        class_names: the dataset's class names, indexed by ``episode.classes``.
    """
    plt = pyplot()
    sy, qy = episode.support_y, episode.query_y  # [N*K], [N*Q]
    with torch.no_grad():
        pred = algo.adapt(episode.support_x, sy, steps=steps)(episode.query_x).argmax(-1)
    ways = int(sy.max()) + 1
    if episode.classes is None:
        names = [str(c) for c in range(ways)]
    else:
        names = [class_names[int(c)] for c in episode.classes]
    short = [n.replace("character", "ch").replace("/rot", " r") for n in names]
    short = [n if len(n) <= 20 else "..." + n[-17:] for n in short]
    order = torch.argsort(sy, stable=True)[: max(ways, min(len(sy), 10))]
    # Queries: up to half of them wrong ones (so errors are visible), the rest right ones
    # spread over the query set, topped up with more wrong ones if too few are right.
    wrong = (pred != qy).nonzero().flatten().tolist()
    right = [i for i in range(len(qy)) if i not in set(wrong)]
    half = max_queries // 2
    spread = right[:: max(1, len(right) // max(1, max_queries - half))]
    picked = (wrong[:half] + spread + wrong[half:])[:max_queries]
    cols = max(len(order), len(picked))
    fig, axes = plt.subplots(2, cols, figsize=(1.45 * cols, 3.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j, i in enumerate(order.tolist()):
        axes[0, j].imshow(_image(episode.support_x[i]).numpy(), cmap="gray")
        axes[0, j].set_title(f"{int(sy[i])}: {short[int(sy[i])]}", fontsize=6)
    for j, i in enumerate(picked):
        ok = bool(pred[i] == qy[i])
        axes[1, j].imshow(_image(episode.query_x[i]).numpy(), cmap="gray")
        axes[1, j].set_title(f"true {int(qy[i])}\npred {int(pred[i])}", fontsize=7,
                             color="green" if ok else "red")
    accuracy = float((pred == qy).float().mean())
    fig.suptitle(f"{title}: support (top) and queries (bottom); query accuracy "
                 f"{100 * accuracy:.0f}% over {len(qy)}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def plot_sinusoid(algo: Any, sampler: EpisodeSampler, path: str | Path, tasks: int = 2,
                  steps: Sequence[int] = (0, 1, 10)) -> Path:
    """Predictions after ``steps`` inner steps against the true sine (Finn et al. 2017,
    Fig. 2) for the first ``tasks`` fixed test tasks of ``sampler``."""
    from metafit.data.sinusoid import Sinusoid

    plt = pyplot()
    family = sampler.dataset
    if not isinstance(family, Sinusoid):
        raise ValueError("plot_sinusoid needs a sampler over the Sinusoid task family")
    episodes = sampler.fixed(max(tasks, 1))
    amplitude, phase = family.sample_tasks(len(episodes), sampler.fixed_generator())
    lo, hi = family.x_range
    grid = torch.linspace(lo, hi, 200).unsqueeze(-1)  # [200, 1]
    xs = grid.squeeze(-1).numpy()  # [200]
    fig, axes = plt.subplots(1, tasks, figsize=(5 * tasks, 3.6), squeeze=False)
    for t in range(tasks):
        ax, task = axes[0, t], episodes[t]
        true = Sinusoid.curve(amplitude[t], phase[t], grid)  # [200, 1]
        ax.plot(xs, true.squeeze(-1).numpy(), color="red", label="ground truth")
        wanted = set(steps)
        with torch.no_grad():
            for s, (_, out) in enumerate(algo.trajectory(task.support_x, task.support_y,
                                                         max(steps), grid)):
                if s in wanted:
                    ax.plot(xs, out.squeeze(-1).numpy(), linestyle="--" if s == 0 else "-",
                            label=f"after {s} step{'s' if s != 1 else ''}")
        ax.scatter(task.support_x.squeeze(-1).numpy(), task.support_y.squeeze(-1).numpy(),
                   color="black", marker="^", zorder=5,
                   label=f"{len(task.support_x)} support points")
        ax.set(xlabel="x", ylabel="y", title=f"task {t}: A={float(amplitude[t]):.2f}, "
               f"phase={float(phase[t]):.2f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, Path(path))

