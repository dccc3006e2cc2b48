"""``confusion_<run>.png``: where a run's queries went, over its evaluation episodes.

Left: counts by in-episode label (true label against predicted label; see
:mod:`metafit.evaluation.confusion` for what it shows: a bias towards an output unit).
Right: counts by true class name when the episodes drew at most :data:`MAX_NAMED`
classes (rows normalised: where the queries of each class went, in the episodes that drew
it), else the most frequent mistakes as ``true -> taken for`` bars, since with hundreds of
classes most pairs never meet in an episode. Colours are row fractions; the numbers in the
cells (drawn where the matrix is small enough to read) are counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from metafit.evaluation.confusion import Predictions
from metafit.runs.episode_plots import display_name
from metafit.runs.figures import finish, pyplot, save_figure

__all__ = ["confusion_figure", "matrix_panel", "plot_confusion", "MAX_NAMED", "MAX_ANNOTATED"]

#: A class-name matrix is drawn for at most this many classes (else the top mistakes).
MAX_NAMED = 30
#: Counts are written in the cells of matrices up to this size.
MAX_ANNOTATED = 12


def matrix_panel(ax: Any, counts: Tensor, labels: Sequence[str], fig: Any) -> None:
    """Row-normalised colours of ``counts [C, C]``, the counts written in small ones."""
    rows = counts.sum(1, keepdim=True).clamp(min=1)
    shown = ax.imshow((counts / rows).numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    size = len(labels)
    font = 7 if size <= MAX_ANNOTATED else max(5, 8 - size // 8)
    ax.set_xticks(range(size), labels, rotation=90, fontsize=font)
    ax.set_yticks(range(size), labels, fontsize=font)
    if size <= MAX_ANNOTATED:
        for t in range(size):
            for p in range(size):
                dark = float(counts[t, p] / rows[t]) > 0.6
                ax.text(p, t, str(int(counts[t, p])), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black", gid="count")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03, label="fraction of the row")


def _mistakes(ax: Any, preds: Predictions, names: Sequence[str], top: int = 12) -> None:
    """The ``top`` most frequent (true class -> taken for) pairs as horizontal bars."""
    pairs = preds.confused_pairs(top)
    labels = [f"{display_name(names[t], 40, 1)} -> {display_name(names[p], 40, 1)}"
              for t, p, _ in pairs]
    ax.barh(range(len(pairs)), [n for _, _, n in pairs], color="#d7191c")
    ax.set_yticks(range(len(pairs)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("queries taken for that class")
    ax.grid(axis="x", alpha=0.3)


def confusion_figure(preds: Predictions, class_names: Sequence[str] | None,
                     title: str = "Confusion", banner: Sequence[str] = ()) -> Any:
    """The figure of :func:`plot_confusion`: ``preds`` over the evaluation episodes, and
    the dataset's class names (indexed by the episodes' class ids; None: unknown)."""
    plt = pyplot()
    named = preds.classes is not None and class_names is not None
    seen = preds.seen_classes() if named else []
    big = MAX_ANNOTATED < len(seen) <= MAX_NAMED  # a class matrix too big to annotate
    fig, axes = plt.subplots(1, 2 if named else 1, squeeze=False, layout="constrained",
                             figsize=(13.0 if named else 5.8, 7.6 if big else 4.8),
                             gridspec_kw={"width_ratios": [1, 1.7 if big else 1.35]}
                             if named else None)
    ways = [str(k) for k in range(preds.ways)]
    matrix_panel(axes[0, 0], preds.by_position(), ways, fig)
    axes[0, 0].set(xlabel="predicted label", ylabel="true label",
                   title="By in-episode label (classes drawn at random\nper episode: a "
                         "heavy column = a bias towards that output)")
    axes[0, 0].title.set_fontsize(8)
    if named:
        assert class_names is not None
        ax = axes[0, 1]
        if len(seen) <= MAX_NAMED:
            ids, counts = preds.by_class()
            matrix_panel(ax, counts, [display_name(class_names[c], 42, 1) for c in ids], fig)
            ax.set(xlabel="taken for")  # no y label: long names push it onto the left panel
            ax.set_title(f"By true class, one row each ({len(seen)} classes; a cell can only "
                         "fill where both classes met in an episode)", fontsize=8)
        else:
            _mistakes(ax, preds, class_names)
            ax.set_title(f"Most frequent mistakes ({len(seen)} classes drawn: too many "
                         "for a matrix, most pairs never meet)", fontsize=8)
    episodes, queries = preds.true.shape
    fig.suptitle(f"{title}: every query of {episodes} evaluation episodes "
                 f"({episodes * queries} in all, accuracy {100 * preds.accuracy:.1f}%)",
                 fontsize=9)
    finish(fig, banner, tight=False)  # the constrained layout leaves the colour bars room
    return fig


def plot_confusion(preds: Predictions, class_names: Sequence[str] | None, path: str | Path,
                   title: str = "Confusion", banner: Sequence[str] = ()) -> Path:
    """Write :func:`confusion_figure` to ``path``."""
    return save_figure(confusion_figure(preds, class_names, title, banner), Path(path),
                       bbox_inches="tight")  # long class names below the matrix stay in
