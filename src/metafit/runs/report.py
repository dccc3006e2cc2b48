"""``metafit report RUN [RUN ...]``: the plots of one or more runs (see
:mod:`metafit.runs.plots`) with ``report.md`` and ``report.json`` listing their test results.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metafit.config.schema import Recipe
from metafit.data.sampler import EpisodeSampler
from metafit.evaluation.protocol import EvalResult, evaluate
from metafit.io import atomic_write_text
from metafit.runs.directory import RunDir
from metafit.runs.episode_plots import plot_episode
from metafit.runs.plots import plot_adaptation, plot_sinusoid, plot_training
from metafit.runs.trained import check_count, load_trained, record_evaluation, split_sampler

__all__ = ["report_runs"]

log = logging.getLogger(__name__)

#: label -> (run directory, its recipe, its trained algorithm)
Loaded = dict[str, tuple[Path, Recipe, Any]]


def report_runs(runs: Sequence[str | Path], out: str | Path | None = None,
                episodes: int = 100, split: str = "test", progress: bool = False
                ) -> list[Path]:
    """Write the plots of one or more runs (and ``report.md`` listing them) into ``out``
    (default: ``RUN/report`` for a single run); returns the files written.

    The adaptation curve evaluates each run's best checkpoint on ``episodes`` fixed
    episodes of ``split`` (saved as ``eval_*.json`` in the run's report directory), with a
    progress bar per run on stderr when ``progress``.

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
    loaded = _load(paths)
    written = [plot_training({k: RunDir(p) for k, (p, _, _) in loaded.items()},
                             out / "training.png")]
    results: dict[str, EvalResult] = {}
    samplers: dict[str, EpisodeSampler] = {}
    for label, (p, recipe, algo) in loaded.items():
        samplers[label] = split_sampler(recipe, split)  # type: ignore[arg-type]
        results[label] = record_evaluation(
            p, evaluate(algo, samplers[label], episodes=episodes, progress=progress,
                        desc=f"evaluating {label}"), recipe, split, "best")
    first_label, (_, recipe0, algo0) = next(iter(loaded.items()))
    task = (f"{recipe0.eval_ways}-way {recipe0.eval_shots}-shot" if not recipe0.is_regression
            else f"{recipe0.eval_shots}-shot regression")
    written.append(plot_adaptation(results, out / "adaptation.png",
                                   title=f"Adaptation on {split} tasks ({task})"))
    written += _example_plot(first_label, recipe0, algo0, samplers[first_label], out)
    _write_summary(out, loaded, results, written)
    return [*written, out / "report.md"]


def _load(paths: list[Path]) -> Loaded:
    """Each run's recipe and best algorithm, labelled by algorithm (``maml'`` for a second
    MAML run).

    Raises:
        ValueError: classification and regression runs together.
    """
    loaded: Loaded = {}
    for p in paths:
        recipe, algo = load_trained(p)
        label = recipe.algorithm
        while label in loaded:
            label = f"{label}'"
        loaded[label] = (p, recipe, algo)
    if len({r.is_regression for _, r, _ in loaded.values()}) > 1:
        raise ValueError("cannot plot classification and regression runs together")
    return loaded


def _example_plot(label: str, recipe: Recipe, algo: Any, sampler: EpisodeSampler,
                  out: Path) -> list[Path]:
    """The first run's example: its sinusoid fits, or one test episode of images."""
    if recipe.is_regression:
        if recipe.dataset == "sinusoid":
            return [plot_sinusoid(algo, sampler, out / "sinusoid.png")]
        return []
    episode = sampler.fixed(1)[0]
    if episode.support_x.dim() == 4:  # images [B, C, H, W]
        return [plot_episode(algo, episode, sampler.dataset.classes,  # type: ignore[union-attr]
                             out / "episode.png", title=label)]
    return []


def _write_summary(out: Path, loaded: Loaded, results: dict[str, EvalResult],
                   written: list[Path]) -> None:
    """``report.md`` (a table of the runs' results and the plots) and ``report.json``."""
    lines = ["# metafit report", "", "| run | algorithm | result |", "|---|---|---|"]
    for label, (p, _, _) in loaded.items():
        lines.append(f"| {p} | {label} | {results[label].summary()} |")
    lines += [""] + [f"![{f.stem}]({f.name})" for f in written]
    summary = {label: r.to_dict() for label, r in results.items()}
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "report.json", json.dumps(summary, indent=1))
    log.info("report written to %s", out)
