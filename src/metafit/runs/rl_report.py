"""``metafit report RUN [RUN ...]`` of meta-RL runs (datasets ``rl_nav2d``, ``rl_bandit``,
``rl_tabular``, ``rl_pendulum``): the counterpart of :mod:`metafit.runs.report` for the
supervised path, writing the same three files (``report.md``, ``index.html``,
``report.json``) beside its figures:

- ``training.png``: the training tasks' mean return before and after adaptation against
  iteration, and the validation return (95% CI band);
- ``adaptation.png``: the test return after 0..S adaptation steps (95% CI band), one line
  per run (:func:`~metafit.runs.plots.plot_adaptation`);
- ``trajectories_<run>.png`` for 2D navigation: trajectories before and after one and two
  policy-gradient steps towards fixed held-out goals (Finn et al. 2017, Figure 4, left;
  :mod:`metafit.runs.nav2d_plot`);
- ``cheetah_<run>.gif`` for half-cheetah runs: an episode before and after one adaptation
  step on a forward and a backward task (:mod:`metafit.runs.cheetah_video`; needs a
  headless MuJoCo renderer, else a sentence says why). Other families get a sentence.

Every run is scored from its best checkpoint by :func:`metafit.runs.rl.evaluate_rl_run`
(saved as ``eval_*.json`` in its report directory), so the report's numbers are
``metafit evaluate RUN``'s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metafit.config.schema import Recipe
from metafit.data.splits import Split
from metafit.evaluation.rl import RLEvalResult
from metafit.io import written_together
from metafit.rl.maml import MAMLRL
from metafit.runs.caveats import short_run_caveats
from metafit.runs.directory import RunDir
from metafit.runs.figures import finish, iteration_axes, pyplot, save_figure, series_style
from metafit.runs.nav2d_plot import plot_nav2d
from metafit.runs.plots import plot_adaptation
from metafit.runs.report_page import ReportPage, Section, Table, run_label, write_report
from metafit.runs.rl import evaluate_rl_run, load_rl_trained, rl_eval_steps, rl_sampler

__all__ = ["report_rl_runs", "rl_training_figure", "TRAJECTORY_TASKS", "TRAJECTORY_STEPS"]

log = logging.getLogger(__name__)

#: Held-out goals drawn in a navigation run's trajectory figure (the first fixed tasks).
TRAJECTORY_TASKS = 3
#: Adaptation steps drawn after the pre-update policy (the paper's figure: 0, 1, 2).
TRAJECTORY_STEPS = 2


@dataclass
class _RLRun:
    """One run of the report: where it is, its recipe and learner, and its score."""

    path: Path
    recipe: Recipe
    algo: MAMLRL
    result: RLEvalResult
    slug: str


def report_rl_runs(paths: Sequence[Path], out: Path, episodes: int | None = None,
                   split: Split = "test") -> list[Path]:
    """Write the figures of meta-RL runs, ``report.md``, ``index.html`` and
    ``report.json`` into ``out``; returns the figures and the two pages.

    ``episodes``: held-out tasks per run (None: each recipe's ``test_episodes``).

    Raises:
        ValueError: a run is not a meta-RL run, or the errors of
            :func:`~metafit.runs.rl.evaluate_rl_run`.
    """
    runs: dict[str, _RLRun] = {}
    for p in paths:
        recipe, algo = load_rl_trained(p)
        label = run_label(recipe.algorithm, runs)
        result = evaluate_rl_run(p, split=split, episodes=episodes)
        runs[label] = _RLRun(p, recipe, algo, result, re.sub(r"[^A-Za-z0-9_.-]+", "_", label))
    dirs = {label: RunDir(r.path) for label, r in runs.items()}
    banner = short_run_caveats(dirs, min(r.result.episodes for r in runs.values()))
    page = ReportPage("metafit report (meta-RL)", warnings=banner)
    page.sections.append(_results_section(runs, split))
    with written_together():  # an interrupted report leaves the previous one whole
        save_figure(rl_training_figure(dirs, banner), out / "training.png")
        first = next(iter(runs.values()))
        # RLEvalResult has every field the curve over steps reads (curve, curve_ci95,
        # curve_steps, metric); ways and shots are read for accuracy only
        plot_adaptation({label: r.result for label, r in runs.items()},  # type: ignore[misc]
                        out / "adaptation.png", title=f"Adaptation on {split} tasks "
                        f"({first.recipe.dataset})", banner=banner)
        page.sections.append(Section("Training and adaptation", figures=[
            ("training.png", "Training tasks' return before and after adaptation, and the "
                             "validation return (95% CI band), against iteration"),
            ("adaptation.png", "Test return after 0..S adaptation steps (95% CI band)")]))
        for label, run in runs.items():
            page.sections.append(_run_section(label, run, out, split, banner))
        files = write_report(out, page, {label: r.result.to_dict()
                                         for label, r in runs.items()})
    log.info("report written to %s", out)
    return files


def _results_section(runs: Mapping[str, _RLRun], split: Split) -> Section:
    rows = []
    for label, r in runs.items():
        curve = ", ".join(f"{s}: {v:.2f}" for s, v in zip(r.result.curve_steps,
                                                          r.result.curve, strict=True))
        rows.append([label, str(r.path), r.recipe.dataset, f"{r.result.mean:.2f}",
                     f"+- {r.result.ci95:.2f}", str(r.result.episodes),
                     str(r.result.trajectories), str(r.result.steps), curve])
    return Section(f"Results on {split} tasks", text=(
        "Mean undiscounted return on fixed held-out tasks after the evaluation's adaptation "
        "steps (each step samples the trajectories per task with the parameters it starts "
        "from and takes one policy-gradient step at the inner rate, times inner_lr_decay "
        "after the first), 95% CI over tasks; "
        "the last column is the return after 0..S steps."), tables=[Table(
            ["run", "directory", "family", "return", "95% CI", "tasks",
             "trajectories per step", "steps", "after 0..S steps"], rows)])


def _run_section(label: str, run: _RLRun, out: Path, split: Split, banner: Sequence[str]
                 ) -> Section:
    """A navigation run's trajectory figure; a sentence for the other families."""
    section = Section(f"Run {label} ({run.path})")
    if run.recipe.dataset in ("rl_cheetah_dir", "rl_cheetah_vel"):
        return _cheetah_section(section, label, run, out, split)
    if run.recipe.dataset != "rl_nav2d":
        section.text = (f"No trajectory figure: trajectories are drawn for 2D navigation "
                        f"(rl_nav2d) only, and this run's family is {run.recipe.dataset}, "
                        "whose states are not positions in a plane.")
        return section
    name = f"trajectories_{run.slug}.png"
    steps = max(1, min(TRAJECTORY_STEPS, rl_eval_steps(run.recipe)))
    plot_nav2d(run.algo, rl_sampler(run.recipe, split), out / name, tasks=TRAJECTORY_TASKS,
               steps=steps, trajectories=run.recipe.trajectories, title=label, banner=banner)
    section.figures.append((name, (
        f"Trajectories on the first {TRAJECTORY_TASKS} fixed {split} goals (red star), from "
        f"the origin: the meta-learned policy before adaptation (dashed) and after 1..{steps} "
        f"policy-gradient steps on {run.recipe.trajectories} trajectories each, one sampled "
        "trajectory drawn per policy (Finn et al. 2017, Figure 4, left)")))
    return section


def _cheetah_section(section: Section, label: str, run: _RLRun, out: Path, split: Split
                     ) -> Section:
    """A half-cheetah run's clip before and after one adaptation step, or why not."""
    from metafit.runs.cheetah_video import RenderUnavailable, cheetah_clips, write_gif

    try:
        clips = cheetah_clips(run.algo, run.recipe, rl_sampler(run.recipe, split))
    except RenderUnavailable as e:
        section.text = f"No clip: {e}."
        return section
    name = f"cheetah_{run.slug}.gif"
    write_gif(clips, out / name)
    section.figures.append((name, (
        f"{label} on fixed {split} tasks: one episode of the meta-learned policy's mean "
        f"action before adaptation (left) and after one policy-gradient step on "
        f"{run.recipe.trajectories} trajectories (right), rendered by Gymnasium's MuJoCo "
        "renderer; the label gives each episode's return")))
    return section


def rl_training_figure(runs: Mapping[str, RunDir], banner: Sequence[str] = ()) -> Any:
    """Two panels against iteration: the training records' ``return_before`` (dotted) and
    ``return_after`` per run, and the validation ``return`` with its 95% CI band."""
    plt = pyplot()
    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs_all: list[float] = []
    for i, (label, run) in enumerate(runs.items()):
        records = run.read_metrics()
        train = [r for r in records if r.get("split") == "train" and "return_after" in r]
        val = [r for r in records if r.get("split") == "val" and "return" in r]
        xt = [r["iteration"] for r in train]
        ax_train.plot(xt, [r["return_before"] for r in train], color=f"C{i}", linestyle=":",
                      label=f"{label} before adaptation", **series_style(len(xt)))
        ax_train.plot(xt, [r["return_after"] for r in train], color=f"C{i}",
                      label=f"{label} after adaptation", **series_style(len(xt)))
        xv = [r["iteration"] for r in val]
        ys = [r["return"] for r in val]
        ci = [r.get("ci95") or 0.0 for r in val]
        ax_val.plot(xv, ys, color=f"C{i}", label=f"{label} validation",
                    **series_style(len(xv)))
        ax_val.fill_between(xv, [y - c for y, c in zip(ys, ci, strict=True)],
                            [y + c for y, c in zip(ys, ci, strict=True)], color=f"C{i}",
                            alpha=0.15)
        xs_all += xt + xv
    ax_train.set(xlabel="meta-training iteration", ylabel="mean return",
                 title="Training tasks (before and after the inner steps)")
    ax_val.set(xlabel="meta-training iteration", ylabel="validation return",
               title="Validation (fixed tasks, 95% CI band)")
    iteration_axes((ax_train, ax_val), xs_all)
    finish(fig, banner)
    return fig
