"""The report's figures show what they claim: integer axes and markers for short runs,
accuracies of different ways kept apart, chance lines, a picture for methods without
inner steps, episodes drawn by class, and the banner of runs too short to trust."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from metafit.episodes import Episode
from metafit.evaluation.protocol import EvalResult
from metafit.runs.directory import RunDir
from metafit.runs.episode_plots import episode_figure, queries_shown
from metafit.runs.figures import banner_texts, integer_axis, pyplot
from metafit.runs.plots import adaptation_figure, results_figure, training_figure
from metafit.training.trainer import Trainer
from test_trainer import classification_recipe, image_folder


def _result(mean: float, ways: int = 5, shots: int = 1, steps: int = 0,
            curve: list[float] | None = None) -> EvalResult:
    curve = curve or [mean]
    return EvalResult(metric="accuracy", mean=mean, ci95=0.02, episodes=40, steps=steps,
                      per_episode=[mean] * 40, curve=curve, curve_ci95=[0.02] * len(curve),
                      ways=ways, shots=shots, queries=15,
                      curve_steps=list(range(len(curve))))


def _run(tmp_path: Path, algorithm: str, **extra: object) -> RunDir:
    root = tmp_path / "data"
    if not root.exists():
        image_folder(root)
    out = tmp_path / f"{algorithm}-{len(list(tmp_path.iterdir()))}"
    Trainer(classification_recipe(root, algorithm, **extra), out, progress=False).fit()
    return RunDir(out)


def _is_integer(value: float) -> bool:
    return math.isclose(value, round(value))


@pytest.mark.parametrize("iterations", [1, 2])
def test_a_short_run_has_markers_integer_ticks_and_a_banner(tmp_path: Path,
                                                            iterations: int) -> None:
    run = _run(tmp_path, "maml", iterations=iterations, val_every=1)
    fig = training_figure({"maml": run}, banner=["too short"])
    ax_loss = fig.axes[0]
    (line,) = ax_loss.get_lines()
    assert len(line.get_xdata()) == iterations
    assert line.get_marker() not in (None, "None", "")  # a point is visible, not a line
    lo, hi = ax_loss.get_xlim()
    assert _is_integer(lo) and _is_integer(hi) and hi - lo >= 2
    assert lo <= 0 < iterations < hi
    ticks = [t for t in ax_loss.get_xticks() if lo <= t <= hi]
    assert ticks and all(_is_integer(t) for t in ticks)
    assert banner_texts(fig) == ["Warning: too short"]
    pyplot().close(fig)


def test_integer_axis_of_one_point_spans_its_neighbours() -> None:
    fig, ax = pyplot().subplots()
    ax.plot([4], [1.0])
    integer_axis(ax, [4])
    assert ax.get_xlim() == (3.0, 5.0)  # not matplotlib's 3.8 .. 4.2
    pyplot().close(fig)


def _labels(ax: object) -> list[str]:
    return [h.get_label() for h in ax.get_legend_handles_labels()[0]]  # type: ignore[attr-defined]


def test_training_accuracy_shares_the_validation_axis_only_at_the_same_ways(
        tmp_path: Path) -> None:
    same = _run(tmp_path, "maml")  # 2-way training, 2-way validation
    other = _run(tmp_path, "protonet", ways=4, test_ways=2, inner_steps=0)
    fig = training_figure({"maml": same})
    assert len(fig.axes) == 2
    assert any("meta-train query (2-way" in s for s in _labels(fig.axes[1]))
    pyplot().close(fig)
    fig = training_figure({"maml": same, "protonet": other})
    assert len(fig.axes) == 3  # the 4-way training accuracy has its own panel
    val_labels, train_labels = _labels(fig.axes[1]), _labels(fig.axes[2])
    assert not any("protonet meta-train" in s for s in val_labels)
    assert any("maml meta-train query (2-way" in s for s in val_labels)  # still comparable
    assert [s for s in train_labels if "meta-train" in s] == [
        "protonet meta-train query (4-way 1-shot)"]
    assert any("protonet validation (2-way" in s for s in val_labels)
    chance = [ln.get_ydata()[0] for ln in fig.axes[1].get_lines() if "chance" in ln.get_label()]
    assert chance == [50.0]  # 1 / 2 ways, in percent
    chance = [ln.get_ydata()[0] for ln in fig.axes[2].get_lines() if "chance" in ln.get_label()]
    assert chance == [25.0]  # 4-way protonet
    pyplot().close(fig)


def test_a_method_without_inner_steps_gets_a_readable_picture() -> None:
    protonet = _result(0.9, shots=1)
    shots = {"protonet": {1: protonet, 2: _result(0.93, shots=2), 5: _result(0.96, shots=5)}}
    fig = adaptation_figure({"protonet": protonet}, levels={"protonet": "no inner steps"},
                            shots=shots)
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    assert lo < 1 and hi > 5 and hi - lo > 4  # not -0.04 .. 0.04 around a lone square
    assert [int(t) for t in ax.get_xticks()] == [1, 2, 5]
    assert "no inner steps" in ax.get_title()
    assert "shots" in ax.get_xlabel()
    pyplot().close(fig)
    # Beside a method with steps, it is a level across them, and says why.
    maml = _result(0.6, steps=3, curve=[0.2, 0.5, 0.55, 0.6])
    fig = adaptation_figure({"maml": maml, "protonet": protonet},
                            levels={"protonet": "no inner steps"})
    ax = fig.axes[0]
    level = next(ln for ln in ax.get_lines() if ln.get_label().startswith("protonet"))
    assert "(no inner steps)" in level.get_label()
    assert list(level.get_ydata()) == pytest.approx([90.0, 90.0])  # flat across the axis
    lo, hi = ax.get_xlim()
    assert _is_integer(lo) and _is_integer(hi) and lo < 0 and hi > 3
    assert any(ln.get_ydata()[0] == 20.0 for ln in ax.get_lines() if "chance" in ln.get_label())
    pyplot().close(fig)


def test_results_have_a_chance_line_and_the_banner() -> None:
    rows = [("maml", "5-way 1-shot", _result(0.5)), ("scratch", "5-way 1-shot", _result(0.3))]
    fig = results_figure(rows, banner=["maml: 4 iterations"])
    chance = [ln for ln in fig.axes[0].get_lines() if "chance" in ln.get_label()]
    assert len(chance) == 1 and chance[0].get_ydata()[0] == pytest.approx(20.0)
    assert banner_texts(fig) == ["Warning: maml: 4 iterations"]
    pyplot().close(fig)


def _episode(ways: int = 3, shots: int = 2, queries: int = 4, seed: int = 0) -> Episode:
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(ways).repeat_interleave(shots)[torch.randperm(ways * shots, generator=g)]
    qy = torch.arange(ways).repeat_interleave(queries)[torch.randperm(ways * queries,
                                                                      generator=g)]
    return Episode(torch.rand(len(sy), 1, 8, 8, generator=g), sy,
                   torch.rand(len(qy), 1, 8, 8, generator=g), qy)


def _span(fig: object, gid: str) -> tuple[float, float]:
    ax = next(a for a in fig.axes if a.get_gid() == gid)  # type: ignore[attr-defined]
    box = ax.get_position()
    return box.x0, box.x1


def test_each_query_is_drawn_under_its_true_class() -> None:
    episode = _episode()
    pred = episode.query_y.clone()
    pred[:3] = (pred[:3] + 1) % 3  # three mistakes
    names = ["Alpha/character01", "Beta/character02", "Gamma/character03"]
    fig = episode_figure(episode, pred, names)
    heads = [_span(fig, f"class-{k}") for k in range(3)]
    for i, label in enumerate(episode.query_y.tolist()):
        x0, x1 = _span(fig, f"query-{i}")
        centre = (x0 + x1) / 2
        assert heads[label][0] <= centre <= heads[label][1], (i, label)
        assert sum(h[0] <= centre <= h[1] for h in heads) == 1
    for i, label in enumerate(episode.support_y.tolist()):
        x0, x1 = _span(fig, f"support-{i}")
        assert heads[label][0] <= (x0 + x1) / 2 <= heads[label][1]
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    assert any("Alpha / ch01" in t for t in texts)  # class names, not indices
    title = fig.get_suptitle()
    assert "all 12 queries" in title and "75%" in title  # 9 of 12 right
    wrong = [a.get_title() for a in fig.axes if a.get_gid() in {f"query-{i}" for i in range(3)}]
    assert all(t.startswith("as ") for t in wrong)
    pyplot().close(fig)


def test_a_large_episode_shows_a_fair_sample_and_says_so() -> None:
    episode = _episode(ways=4, shots=1, queries=15)
    shown, which = queries_shown(episode.query_y, 4, max_queries=20)
    assert [len(s) for s in shown] == [5, 5, 5, 5]  # the same number of every class
    for k, indices in enumerate(shown):  # the first drawn of each class, in order
        assert indices == (episode.query_y == k).nonzero().flatten().tolist()[:5]
    assert which.startswith("first 5 of 15 queries per class")
    fig = episode_figure(episode, episode.query_y, ["a", "b", "c", "d"], max_queries=20)
    assert sum(str(a.get_gid()).startswith("query-") for a in fig.axes) == 20
    assert "first 5 of 15" in fig.get_suptitle()
    pyplot().close(fig)
