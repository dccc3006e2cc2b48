"""One evaluation episode as people read it: ``episode_<run>.png`` for every run.

Images: one block of columns per class, headed by the class's name; the support images
on top (blue frames), then the queries *of that class* below them, each framed green
(predicted right) or red (wrong, with the class it was taken for). Every query is drawn
when the episode has at most ``max_queries`` of them, else the first ``max_queries //
ways`` of each class in the order the sampler drew them (a fair sample: not chosen by
outcome); the title says which, and gives the accuracy over all the episode's queries.

Text (the CSV intent datasets): the same layout as lines of sentences, grouped by true
intent (a fair sample of each class's queries; :func:`text_rows` gives every one of them
for the report's table).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from metafit.episodes import Episode
from metafit.runs.figures import finish, plain, pyplot, save_figure

__all__ = ["plot_episode", "episode_figure", "text_episode_figure", "text_rows",
           "display_name", "class_key", "queries_shown", "MAX_QUERIES"]

#: An episode with more queries than this shows a fair sample of each class's queries.
MAX_QUERIES = 100
RIGHT, WRONG, SUPPORT = "#1a9641", "#d7191c", "#2b83ba"


def display_name(name: str, width: int = 18, lines: int = 2) -> str:
    """A dataset class name made short and wrapped for a figure:
    ``Early_Aramaic/character01/rot90`` -> ``Early Aramaic / ch01 / r90``."""
    short = (name.replace("_", " ").replace("/", " / ").replace("character", "ch")
             .replace(" rot", " r"))
    wrapped = textwrap.wrap(short, width) or [short]
    if len(wrapped) > lines:
        wrapped = wrapped[: lines - 1] + ["..." + short[-(width - 3):]]
    return plain("\n".join(wrapped))


def queries_shown(query_y: Tensor, ways: int, max_queries: int = MAX_QUERIES
                  ) -> tuple[list[list[int]], str]:
    """The query indices to draw for each class (in the sampler's order) and how the title
    says it: all of them, or the first ``max_queries // ways`` of each class."""
    per_class = [(query_y == k).nonzero().flatten().tolist() for k in range(ways)]
    total = len(query_y)
    if total <= max_queries:
        return per_class, f"all {total} queries"
    keep = max(1, max_queries // ways)
    most = max(len(p) for p in per_class)
    return ([p[:keep] for p in per_class],
            f"first {keep} of {most} queries per class as drawn (not chosen by outcome)")


def _image(x: Tensor) -> Any:
    """``[C, H, W]`` float in 0..1 -> an ``[H, W]`` or ``[H, W, C]`` array for imshow."""
    x = x.detach().float().cpu()
    return (x[0] if x.shape[0] == 1 else x.permute(1, 2, 0).clamp(0, 1)).numpy()


def _cell(ax: Any, image: Any, frame: str, title: str = "", color: str = "black") -> None:
    ax.imshow(image, cmap="gray")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(frame)
        spine.set_linewidth(2.5)
    if title:
        ax.set_title(title, fontsize=7, color=color, pad=2)


def class_key(k: int) -> str:
    """The letter that stands for label ``k`` in a figure: A..Z, then AA, AB, ..."""
    letters = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        letters = chr(65 + r) + letters
    return letters


def episode_figure(episode: Episode, pred: Tensor, names: Sequence[str],
                   title: str = "One test episode", max_queries: int = MAX_QUERIES,
                   banner: Sequence[str] = ()) -> Any:
    """The figure of :func:`plot_episode`, for predictions ``pred [N*Q]`` already made and
    the class name of each label (``names [N]``). Each class's block is headed by a letter
    and its name; a wrong query says the letter of the class it was taken for. Axes carry
    gids: ``class-k`` (the header of class k's block), ``support-i``, ``query-i``."""
    plt = pyplot()
    sy, qy, pred = episode.support_y.cpu(), episode.query_y.cpu(), pred.cpu()
    ways = int(sy.max()) + 1
    shown, which = queries_shown(qy, ways, max_queries)
    supports = [(sy == k).nonzero().flatten().tolist() for k in range(ways)]
    sub = max(1, min(3, max(len(s) for s in shown)))  # image columns per class
    s_rows = max(-(-len(s) // sub) for s in supports)
    q_rows = max(-(-len(s) // sub) for s in shown)
    cell = 0.72  # inches
    heights = [0.45] + [cell] * s_rows + [0.08] + [cell] * q_rows
    fig = plt.figure(figsize=(max(5.0, ways * (sub * cell + 0.3) + 0.3), sum(heights) * 1.25))
    outer = fig.add_gridspec(1, ways, wspace=0.1, left=0.02, right=0.98, bottom=0.02,
                             top=0.99)
    for k in range(ways):
        grid = outer[0, k].subgridspec(len(heights), sub, height_ratios=heights,
                                       hspace=0.25, wspace=0.06)
        head = fig.add_subplot(grid[0, :], gid=f"class-{k}")
        head.axis("off")
        head.text(0.5, 0.0, f"{class_key(k)}: " + display_name(names[k], 8 * sub + 2),
                  ha="center", va="bottom", fontsize=7, fontweight="bold",
                  transform=head.transAxes)
        for j, i in enumerate(supports[k]):
            ax = fig.add_subplot(grid[1 + j // sub, j % sub], gid=f"support-{i}")
            _cell(ax, _image(episode.support_x[i]), SUPPORT)
        for j, i in enumerate(shown[k]):
            ax = fig.add_subplot(grid[2 + s_rows + j // sub, j % sub], gid=f"query-{i}")
            ok = bool(pred[i] == qy[i])
            _cell(ax, _image(episode.query_x[i]), RIGHT if ok else WRONG,
                  "" if ok else f"as {class_key(int(pred[i]))}", WRONG)
    accuracy = float((pred == qy).float().mean())
    fig.suptitle(f"{title}: support (blue) above each class's queries; green: right, red: "
                 f"wrong (\"as X\": the class it was taken for)\n{which} shown; accuracy "
                 f"{100 * accuracy:.0f}% over all {len(qy)} queries", fontsize=8)
    finish(fig, banner, tight=False)
    return fig


def plot_episode(algo: Any, episode: Any, class_names: Sequence[str], path: str | Path,
                 steps: int | None = None, max_queries: int = MAX_QUERIES,
                 title: str = "One test episode", banner: Sequence[str] = ()) -> Path:
    """Adapt ``algo`` to the episode's support set and draw :func:`episode_figure`.

    Args:
        algo: a trained algorithm (``adapt(support_x, support_y, steps)``).
        episode: an :class:`~metafit.episodes.Episode` of images ``[B, C, H, W]``.
        class_names: the dataset's class names, indexed by ``episode.classes`` (labels
            are used as names when the episode has no classes).
    """
    with torch.no_grad():
        pred = algo.adapt(episode.support_x, episode.support_y,
                          steps=steps)(episode.query_x).argmax(-1)
    ways = int(episode.support_y.max()) + 1
    names = ([f"label {k}" for k in range(ways)] if episode.classes is None
             else [class_names[int(c)] for c in episode.classes])
    return save_figure(episode_figure(episode, pred, names, title, max_queries, banner),
                       Path(path))


def text_rows(support: Sequence[str], support_y: Tensor, query: Sequence[str],
              query_y: Tensor, pred: Tensor, names: Sequence[str]) -> list[list[str]]:
    """Every sentence of a text episode as ``[true intent, role, sentence, predicted
    intent, "right" | "wrong" | ""]`` rows, grouped by true intent (support first, then
    the queries in the order drawn)."""
    rows = []
    for k, name in enumerate(names):
        rows += [[name, "support", support[i], "", ""]
                 for i in (support_y == k).nonzero().flatten().tolist()]
        for i in (query_y == k).nonzero().flatten().tolist():
            p = int(pred[i])
            rows.append([name, "query", query[i], names[p], "right" if p == k else "wrong"])
    return rows


def text_episode_figure(rows: Sequence[Sequence[str]], title: str = "One test episode",
                        per_class: int = 3, width: int = 95,
                        banner: Sequence[str] = ()) -> Any:
    """Sentences of one text episode (:func:`text_rows`), grouped by true intent: the
    support sentences, then the first ``per_class`` queries of each intent as drawn, each
    marked right (green) or wrong (red, with the intent it was taken for)."""
    plt = pyplot()
    lines: list[tuple[str, str, str]] = []  # (text, colour, weight)
    intents = list(dict.fromkeys(r[0] for r in rows))
    queries = [r for r in rows if r[1] == "query"]
    most = max((sum(r[0] == i for r in queries) for i in intents), default=0)
    for intent in intents:
        lines.append((f"intent: {intent}", "black", "bold"))
        mine = [r for r in rows if r[0] == intent]
        for r in [r for r in mine if r[1] == "support"]:
            lines.append((_clip(f"    support: {r[2]}", width), SUPPORT, "normal"))
        for r in [r for r in mine if r[1] == "query"][:per_class]:
            ok = r[4] == "right"
            mark = "right" if ok else f"WRONG, taken for {r[3]}"
            lines.append((_clip(f"    query ({mark}): {r[2]}", width), RIGHT if ok else WRONG,
                          "normal"))
    fig = plt.figure(figsize=(9.5, 0.9 + 0.19 * len(lines)))
    ax = fig.add_subplot()
    ax.axis("off")
    ax.set_ylim(len(lines) - 0.5, -0.5)
    for j, (text, color, weight) in enumerate(lines):
        ax.text(0.0, j, plain(text), color=color, fontweight=weight, fontsize=7.5,
                va="center")
    right = sum(r[4] == "right" for r in queries)
    shown = "all queries" if per_class >= most else f"first {per_class} of {most} queries " \
        "per intent as drawn (every one in the report's table)"
    ax.set_title(f"{title}: {shown}; accuracy over all {len(queries)} queries "
                 f"{100 * right / max(1, len(queries)):.0f}%", fontsize=8, loc="left")
    finish(fig, banner)
    return fig


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
