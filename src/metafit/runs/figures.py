"""What every report figure shares: the Agg backend, atomic PNG writes, integer axes and
markers for short series, chance lines and the warning banner of runs too short to trust.

Figures are built by ``*_figure`` functions that return a matplotlib ``Figure`` (tests
read its axes) and saved by :func:`save_figure`; nothing is ever shown.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from metafit.io import atomic_write_bytes

__all__ = ["pyplot", "save_figure", "integer_axis", "series_style", "chance_line",
           "finish", "iteration_axes", "banner_texts", "scale_of", "MARKER_POINTS", "DPI",
           "plain"]

#: Series with at most this many points are drawn with a marker on every point (a line
#: alone hides a 2-point series, and a single point drawn as a line is invisible).
MARKER_POINTS = 30
#: Resolution of the saved PNGs.
DPI = 110
#: The banner's colours: dark red text on a pale amber box.
BANNER = {"color": "#8a1c00", "box": "#fff1c9", "edge": "#d08c00"}


def plain(text: str) -> str:
    """``text`` drawn as it is: matplotlib reads ``$...$`` as a formula (``top up $5 and
    $3`` failed to parse and took the whole report with it), so every ``$`` of data is
    escaped as ``\\$``, which matplotlib draws as a dollar sign."""
    return str(text).replace("$", "\\$")


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = DPI, **savefig: Any) -> Path:
    """Write the figure atomically (a crash never leaves half a PNG) and close it;
    ``savefig``: extra options of ``Figure.savefig`` (e.g. ``bbox_inches="tight"``)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, **savefig)
    pyplot().close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def scale_of(metric: str) -> tuple[float, str]:
    """How a metric is drawn: ``(factor, axis label)``; accuracy in percent, a meta-RL
    ``return`` as it is."""
    if metric == "return":
        return 1.0, "return"
    return (100.0, "accuracy (%)") if metric == "accuracy" else (1.0, "MSE")


def integer_axis(ax: Any, values: Sequence[float], start: float | None = None) -> None:
    """Integer ticks on the x axis, and integer limits padded by at least one unit around
    ``values`` (iterations, steps, shots): a single point at 4 gets the axis 3..5, not
    matplotlib's 3.8..4.2. ``start``: the lowest value to show at least (0 for
    iterations: the axis then starts at 0)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    if not values:
        return
    lo, hi = min(values), max(values)
    pad = max(1, math.ceil(0.04 * (hi - lo)))
    low = math.floor(lo) - pad if start is None or lo - pad < start else start
    ax.set_xlim(low, math.ceil(hi) + pad)


def series_style(points: int) -> dict[str, Any]:
    """Line options for a series of ``points`` points: a marker on each when few."""
    if points <= 1:
        return {"marker": "o", "markersize": 7}
    return {"marker": "o", "markersize": 4} if points <= MARKER_POINTS else {}


def iteration_axes(axes: Sequence[Any], iterations: Sequence[float]) -> None:
    """Axes against meta-training iteration: integer ticks from 0 past ``iterations``, a
    light grid, and a legend where something is labelled."""
    for ax in axes:
        integer_axis(ax, iterations, start=0)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)


def chance_line(ax: Any, ways: int, scale: float = 100.0, label: str | None = None,
                color: str = "0.35") -> None:
    """A dotted horizontal line at chance accuracy, ``scale / ways``."""
    if ways < 2:
        return
    ax.axhline(scale / ways, color=color, linestyle=(0, (2, 2)), linewidth=1.0,
               label=label or f"chance, {ways}-way ({100 / ways:.0f}%)", zorder=1)


def finish(fig: Any, banner: Sequence[str] = (), tight: bool = True) -> None:
    """Lay out ``fig`` and, when ``banner`` holds lines (the caveats of runs too short to
    trust), write them in a box across the top, above the suptitle and the axes.

    ``tight``: lay the axes out with ``tight_layout``; False for figures placed by hand
    (or by a layout engine of their own, told to leave the room), which instead grow
    taller by the room the banner and the suptitle take."""
    width, height = (float(v) for v in fig.get_size_inches())
    text = "\n".join(textwrap.fill(f"Warning: {line}", max(60, int(13 * width)))
                     for line in banner)
    top = 0.0 if not banner else 0.2 + 0.14 * (text.count("\n") + 1)  # inches
    title = getattr(fig, "_suptitle", None)  # the Text of fig.suptitle, or None
    banner_in = top
    if title is not None and title.get_text():
        top += 0.12 + 0.16 * (title.get_text().count("\n") + 1)
    if tight:
        fig.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - top / height))
    elif top:
        fig.set_size_inches(width, height + top)
        height += top
        engine = fig.get_layout_engine()
        if engine is not None:  # one that lays the axes out again when drawn
            engine.set(rect=(0.0, 0.0, 1.0, 1.0 - top / height))
        else:
            shrink = (height - top) / height
            for ax in fig.axes:
                p = ax.get_position()
                ax.set_position((p.x0, p.y0 * shrink, p.width, p.height * shrink))
    if title is not None and title.get_text():
        title.set_in_layout(False)  # placed here, below the banner, whatever the layout
        title.set_y(1.0 - (banner_in + 0.04) / height)
        title.set_va("top")
    if banner:
        fig.text(0.5, 1.0 - 0.05 / height, text, ha="center", va="top", fontsize=8,
                 color=BANNER["color"], gid="warning-banner",
                 bbox={"boxstyle": "round,pad=0.4", "facecolor": BANNER["box"],
                       "edgecolor": BANNER["edge"]})


def banner_texts(fig: Any) -> list[str]:
    """The banner lines drawn on ``fig`` by :func:`finish` (for tests and checks)."""
    return [t.get_text() for t in fig.texts if t.get_gid() == "warning-banner"]
