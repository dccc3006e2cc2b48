"""``sinusoid_<run>.png``: a regression run's predicted curves after 0, 1 and 10 inner
steps against the true sine and the support points (Finn et al. 2017, Figure 2)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metafit.data.sampler import EpisodeSampler
from metafit.runs.figures import finish, pyplot, save_figure

__all__ = ["plot_sinusoid"]


def plot_sinusoid(algo: Any, sampler: EpisodeSampler, path: str | Path, tasks: int = 2,
                  steps: Sequence[int] = (0, 1, 10), title: str = "",
                  banner: Sequence[str] = ()) -> Path:
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
        head = f"{title}: " if title else ""
        ax.set(xlabel="x", ylabel="y", title=f"{head}task {t}: A={float(amplitude[t]):.2f}, "
               f"phase={float(phase[t]):.2f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    finish(fig, banner)
    return save_figure(fig, Path(path))

