"""The per-run part of a report: the confusion matrix (figure and counts) and one example
episode (images, sentences with their predicted intents, or sinusoid fits)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from metafit.data.sampler import EpisodeSampler
from metafit.data.sinusoid import Sinusoid
from metafit.data.text_csv import TextCSV
from metafit.episodes import Episode
from metafit.evaluation.confusion import Predictions
from metafit.io import atomic_write_text
from metafit.runs.confusion_plot import plot_confusion
from metafit.runs.episode_plots import episode_figure, text_episode_figure, text_rows
from metafit.runs.figures import save_figure
from metafit.runs.report_page import Table
from metafit.runs.sinusoid_plot import plot_sinusoid

__all__ = ["run_examples", "write_confusion_json", "CONFUSION_NOTE"]

#: What the confusion figure shows, for the pages.
CONFUSION_NOTE = (
    "Confusion over every query of the evaluation episodes. Left: by in-episode label; "
    "classes are assigned to labels at random in each episode, so a heavy column is a bias "
    "of the model towards that output, not a class. Right: by true class name; a class is "
    "confused only with classes drawn in the same episodes, so read it row by row.")

Figures = list[tuple[str, str]]


def run_examples(label: str, slug: str, algo: Any, sampler: EpisodeSampler,
                 preds: Predictions | None, out: Path, banner: Sequence[str]
                 ) -> tuple[Figures, list[Table], str]:
    """Draw run ``label``'s figures into ``out`` (file names end in ``slug``); returns the
    figures (file, caption), tables and a note for its section of the pages."""
    if preds is None:  # regression: the sinusoid fits, if a sinusoid
        if not isinstance(sampler.dataset, Sinusoid):
            return [], [], ""
        name = f"sinusoid_{slug}.png"
        plot_sinusoid(algo, sampler, out / name, title=label, banner=banner)
        return [(name, f"{label}: fits after 0, 1 and 10 inner steps")], [], ""
    names: list[str] | None = list(getattr(sampler.dataset, "classes", []) or []) or None
    figures: Figures = []
    conf = f"confusion_{slug}.png"
    plot_confusion(preds, names, out / conf, title=label, banner=banner)
    write_confusion_json(preds, names, out / f"confusion_{slug}.json")
    figures.append((conf, f"{label}: confusion over the evaluation episodes"))
    episode = cast(Episode, sampler.fixed(preds.true.shape[0])[0])
    labels = ([f"label {k}" for k in range(preds.ways)] if names is None
              or episode.classes is None else [names[int(c)] for c in episode.classes])
    tables: list[Table] = []
    name = f"episode_{slug}.png"
    title = f"{label}, first evaluation episode"
    if episode.support_x.dim() == 4:  # images [B, C, H, W]
        save_figure(episode_figure(episode, preds.pred[0], labels, title, banner=banner),
                    out / name)
    elif isinstance(sampler.dataset, TextCSV):
        rows = _sentences(sampler, preds, labels)
        save_figure(text_episode_figure(rows, title, banner=banner), out / name)
        tables.append(Table(["true intent", "role", "sentence", "predicted intent",
                             "result"], rows, [r[4] for r in rows]))
    else:
        return figures, tables, CONFUSION_NOTE
    figures.append((name, f"{label}: one evaluation episode with its predictions"))
    return figures, tables, CONFUSION_NOTE


def _sentences(sampler: EpisodeSampler, preds: Predictions, labels: list[str]
               ) -> list[list[str]]:
    """The first evaluation episode's sentences with true and predicted intents."""
    ds: TextCSV = sampler.dataset  # type: ignore[assignment]
    idx = sampler.fixed_indices(preds.true.shape[0])[0]
    support = [ds.texts[int(i)] for i in idx.support_x]
    query = [ds.texts[int(i)] for i in idx.query_x]
    return text_rows(support, idx.support_y, query, idx.query_y, preds.pred[0], labels)


def write_confusion_json(preds: Predictions, names: list[str] | None, path: Path) -> Path:
    """The counts behind the figure: ``by_label`` ``[N][N]`` and, with class ids,
    ``classes`` (names or ids) and ``by_class`` ``[C][C]`` over the classes drawn."""
    data: dict[str, Any] = {"episodes": int(preds.true.shape[0]),
                            "queries": int(preds.true.numel()), "accuracy": preds.accuracy,
                            "by_label": preds.by_position().tolist()}
    if preds.classes is not None:
        ids, counts = preds.by_class()
        data["classes"] = [names[c] if names else c for c in ids]
        data["by_class"] = counts.tolist()
    atomic_write_text(path, json.dumps(data))
    return path
