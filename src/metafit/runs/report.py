"""``metafit report RUN [RUN ...]``: the figures of one or more runs with ``report.md``,
``index.html`` (the same page, self-contained) and ``report.json`` (their test results).

Figures (:mod:`metafit.runs.plots` and the modules it names): ``training.png``,
``adaptation.png``, and for every run ``confusion_<run>.png`` and ``episode_<run>.png``
(images or sentences; ``sinusoid_<run>.png`` for sinusoid regression), plus
``confusion_<run>.json`` (the counts). Runs too short to trust (:mod:`metafit.runs.caveats`)
are named in a banner on every figure and a warning at the top of both pages. Meta-RL
runs get their own report (:mod:`metafit.runs.rl_report`: training and adaptation
curves, and navigation trajectories before and after adaptation).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metafit.config.schema import Recipe
from metafit.data.sampler import EpisodeSampler
from metafit.evaluation.confusion import Predictions, predict_episodes
from metafit.evaluation.protocol import EvalResult, evaluate
from metafit.io import written_together
from metafit.runs.caveats import short_run_caveats
from metafit.runs.directory import RunDir
from metafit.runs.forgetting import figure_text, read_forgetting, record_forgetting
from metafit.runs.plots import plot_adaptation, plot_training
from metafit.runs.report_examples import run_examples
from metafit.runs.report_page import ReportPage, Section, Table, run_label, write_report
from metafit.runs.rl import is_rl_run
from metafit.runs.rl_report import report_rl_runs
from metafit.runs.trained import check_count, load_trained, record_evaluation, split_sampler

__all__ = ["report_runs", "shot_counts"]

log = logging.getLogger(__name__)


@dataclass
class Evaluated:
    """One run of the report: where it is, what it is, and how it scored."""

    path: Path
    recipe: Recipe
    algo: Any
    sampler: EpisodeSampler
    result: EvalResult
    slug: str  # the run's part of file names

    @property
    def adapts_with_steps(self) -> bool:
        return bool(type(self.algo).capabilities()["adapts_with_steps"])


def report_runs(runs: Sequence[str | Path], out: str | Path | None = None,
                episodes: int = 100, split: str = "test", progress: bool = False
                ) -> list[Path]:
    """Write the figures of one or more runs, ``report.md``, ``index.html`` and
    ``report.json`` into ``out`` (default: ``RUN/report`` for a single run); returns the
    figures and the two pages.

    Every run's best checkpoint is evaluated on ``episodes`` fixed episodes of ``split``
    (saved as ``eval_*.json`` in the run's report directory), with a progress bar per
    evaluation on stderr when ``progress``; its confusion matrix and example episode come
    from the same episodes.

    Raises:
        ValueError: no runs, several without ``out``, ``episodes`` not a positive
            integer (checked before any work), or classification and regression runs.
    """
    check_count("episodes", episodes, default="100")
    paths = [Path(r) for r in runs]
    if not paths:
        raise ValueError("metafit report needs at least one run directory")
    if out is None:
        if len(paths) > 1:
            raise ValueError("with several runs, say where the report goes (--out DIR)")
        out = RunDir(paths[0]).report
    out = Path(out)
    kinds = {is_rl_run(p) for p in paths}
    if kinds == {True}:
        return report_rl_runs(paths, out, episodes, split)  # type: ignore[arg-type]
    if len(kinds) > 1:
        raise ValueError("cannot report meta-RL and supervised runs together")
    loaded = _load(paths)
    dirs = {label: RunDir(p) for label, (p, _, _) in loaded.items()}
    banner = short_run_caveats(dirs, episodes)
    runs_ = {label: _evaluate(label, p, recipe, algo, split, episodes, progress)
             for label, (p, recipe, algo) in loaded.items()}
    page = ReportPage("metafit report", warnings=banner)
    page.sections.append(_results_section(runs_, split))
    forgetting = _forgetting_section(runs_, episodes, progress)
    if forgetting is not None:
        page.sections.append(forgetting)
    curves = Section("Training and adaptation", figures=[
        ("training.png", "Meta-training loss and validation metric against iteration")])
    with written_together():  # an interrupted report leaves the previous one whole
        plot_training(dirs, out / "training.png", banner)
        curves.figures.append(_adaptation(runs_, out, split, episodes, banner, progress))
        page.sections.append(curves)
        for label, run in runs_.items():
            page.sections.append(_run_section(label, run, out, episodes, banner))
        files = write_report(out, page, {label: r.result.to_dict()
                                         for label, r in runs_.items()})
    log.info("report written to %s", out)
    return files


def _load(paths: list[Path]) -> dict[str, tuple[Path, Recipe, Any]]:
    """Each run's recipe and best algorithm, labelled by algorithm (``maml-2`` for a
    second MAML run).

    Raises:
        ValueError: classification and regression runs together.
    """
    loaded: dict[str, tuple[Path, Recipe, Any]] = {}
    for p in paths:
        recipe, algo = load_trained(p)
        label = run_label(recipe.algorithm, loaded)
        loaded[label] = (p, recipe, algo)
    if len({r.is_regression for _, r, _ in loaded.values()}) > 1:
        raise ValueError("cannot plot classification and regression runs together")
    return loaded


def _evaluate(label: str, path: Path, recipe: Recipe, algo: Any, split: str,
              episodes: int, progress: bool) -> Evaluated:
    sampler = split_sampler(recipe, split)  # type: ignore[arg-type]
    # the setting a deployed model uses, as `metafit evaluate RUN` (BatchNorm: support)
    result = record_evaluation(path, evaluate(algo, sampler, episodes=episodes,
                                              progress=progress, desc=f"evaluating {label}",
                                              batch_norm="support"),
                               recipe, split, "best")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    return Evaluated(path, recipe, algo, sampler, result, slug)


def _task(recipe: Recipe) -> str:
    if recipe.is_regression:
        return f"{recipe.eval_shots}-shot regression"
    return f"{recipe.eval_ways}-way {recipe.eval_shots}-shot"


def _results_section(runs: dict[str, Evaluated], split: str) -> Section:
    """The table of the runs' results."""
    rows = []
    for label, r in runs.items():
        scale, unit = (100.0, " %") if r.result.metric == "accuracy" else (1.0, "")
        rows.append([label, str(r.path), _task(r.recipe), r.result.metric,
                     f"{scale * r.result.mean:.2f}{unit}", f"+- {scale * r.result.ci95:.2f}",
                     str(r.result.episodes),
                     str(r.result.steps) if r.adapts_with_steps else "none (no inner steps)"])
    settings = {r.result.batch_norm for r in runs.values()}
    text = ("BatchNorm as deployed: every query normalised with its support set's "
            "statistics, as `metafit adapt` writes the model (`metafit evaluate RUN "
            "--batch-norm both` adds the transductive figure)." if "support" in settings
            else "")
    return Section(f"Results on {split} episodes", text=text, tables=[Table(
        ["run", "directory", "task", "metric", "mean", "95% CI", "episodes", "inner steps"],
        rows)])


def _forgetting_section(runs: dict[str, Evaluated], episodes: int,
                        progress: bool) -> Section | None:
    """The warm-started runs' accuracy on their previous run's test tasks before and after
    (``forgetting.json``, :mod:`metafit.runs.forgetting`; measured on ``episodes`` episodes
    and written where a run has none yet); ``None`` when no run was warm-started."""
    rows = []
    for label, r in runs.items():
        if not r.recipe.init_from:
            continue
        figure = read_forgetting(r.path) or record_forgetting(r.path, episodes, progress)
        if figure["status"] != "measured":
            rows.append([label, str(figure.get("previous_run", "")), "-", "-", "-",
                         f"not measured: {figure.get('reason', '')}"])
            continue
        task = (f"{figure.get('ways')}-way {figure.get('shots')}-shot, "
                f"{figure['episodes']} episodes")
        rows.append([label, str(figure["previous_run"]), task, figure_text(figure, "before"),
                     figure_text(figure, "after"), figure_text(figure, "delta", sign=True)])
    if not rows:
        return None
    return Section("Forgetting (previous run's test tasks)", text=(
        "A warm-started run (init_from) scored on the fixed test episodes of the run it "
        "started from: before = the warm-start weights, after = this run's best; delta = "
        "after - before, with the 95% CI of the per-episode differences (the same "
        "episodes). From forgetting.json in each run directory."), tables=[Table(
            ["run", "previous run", "previous test tasks", "before", "after", "delta"],
            rows)])


def shot_counts(sampler: EpisodeSampler, candidates: Sequence[int] = (1, 2, 5, 10)
                ) -> list[int]:
    """The shot counts among ``candidates`` and the sampler's own whose episodes the data
    can fill (``ways`` classes with ``shots + queries`` examples each)."""
    counts = sampler.dataset.counts  # type: ignore[union-attr]
    wanted = sorted(set(candidates) | {sampler.shots})
    return [k for k in wanted
            if int((counts >= k + sampler.queries).sum()) >= sampler.ways]


def _adaptation(runs: dict[str, Evaluated], out: Path, split: str, episodes: int,
                banner: Sequence[str], progress: bool) -> tuple[str, str]:
    """``adaptation.png``: against inner steps, or against shots when no run takes steps."""
    first = next(iter(runs.values()))
    levels = {label: "no inner steps" for label, r in runs.items() if not r.adapts_with_steps}
    shots: dict[str, dict[int, EvalResult]] = {}
    if len(levels) == len(runs) and not first.recipe.is_regression:
        for label, r in runs.items():
            shots[label] = {k: evaluate(r.algo, split_sampler(
                r.recipe, split, r.sampler.dataset, shots=k),  # type: ignore[arg-type]
                episodes=episodes, progress=progress, desc=f"{label} {k}-shot",
                batch_norm="support")
                for k in shot_counts(r.sampler)}
    plot_adaptation({k: r.result for k, r in runs.items()}, out / "adaptation.png",
                    title=f"Adaptation on {split} tasks ({_task(first.recipe)})",
                    levels=levels, shots=shots, banner=banner)
    what = ("test accuracy against support shots (no run adapts with inner steps)" if shots
            else "test metric after 0..S inner steps (95% CI band)")
    return "adaptation.png", f"Adaptation: {what}"


def _run_section(label: str, run: Evaluated, out: Path, episodes: int,
                 banner: Sequence[str]) -> Section:
    """One run's confusion matrix and example episode (or sinusoid fits)."""
    section = Section(f"Run {label} ({run.path})")
    preds: Predictions | None = None
    if not run.recipe.is_regression:
        preds = predict_episodes(run.algo, run.sampler.fixed(episodes))
    figures, tables, text = run_examples(label, run.slug, run.algo, run.sampler, preds, out,
                                         banner)
    section.figures, section.tables, section.text = figures, tables, text
    return section
