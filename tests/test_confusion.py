"""Confusion over the evaluation episodes: labels mapped back to their classes, counts that
add up to the queries, and the protocol's accuracy on the diagonal."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metafit.evaluation.confusion import Predictions, predict_episodes
from metafit.evaluation.protocol import evaluate
from metafit.runs.confusion_plot import confusion_figure
from metafit.runs.figures import pyplot
from metafit.runs.trained import load_trained, split_sampler
from metafit.training.trainer import Trainer
from test_trainer import classification_recipe, image_folder


def test_confusion_counts_map_labels_back_to_their_classes() -> None:
    # Two episodes of 2 ways, 2 queries per class; label j means another class each time.
    preds = Predictions(true=torch.tensor([[0, 1, 0, 1], [1, 0, 1, 0]]),
                        pred=torch.tensor([[0, 0, 0, 1], [1, 0, 0, 0]]), ways=2,
                        classes=torch.tensor([[7, 3], [3, 9]]))
    assert preds.by_position().tolist() == [[4, 0], [2, 2]]
    ids, counts = preds.by_class()
    assert ids == [3, 7, 9]
    # class 3 (in both): 3 right, 1 taken for 7; class 7: 2 right; class 9: 1 taken for 3.
    assert counts.tolist() == [[3, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert int(counts.sum()) == int(preds.by_position().sum()) == preds.true.numel()
    assert preds.accuracy == pytest.approx(6 / 8)
    assert preds.confused_pairs() == [(3, 7, 1), (9, 3, 1)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("confusion")
    run = root / "run"
    Trainer(classification_recipe(image_folder(root / "data"), "maml"), run,
            progress=False).fit()
    return run


def test_confusion_over_evaluation_episodes_matches_the_protocol(trained: Path) -> None:
    recipe, algo = load_trained(trained)
    sampler = split_sampler(recipe, "test")
    episodes = sampler.fixed(7)
    preds = predict_episodes(algo, episodes)
    queries = 7 * recipe.eval_ways * recipe.eval_queries
    assert int(preds.by_position().sum()) == queries
    ids, counts = preds.by_class()
    assert int(counts.sum()) == queries
    per_class = torch.bincount(episodes.classes.gather(1, episodes.query_y).flatten(),
                               minlength=max(ids) + 1)[ids]
    assert counts.sum(1).tolist() == per_class.tolist()  # every query in its class's row
    assert preds.accuracy == pytest.approx(evaluate(algo, sampler, episodes=7).mean, abs=1e-6)
    names = sampler.dataset.classes  # type: ignore[union-attr]
    fig = confusion_figure(preds, names, title="maml")
    drawn = [int(t.get_text()) for t in fig.axes[0].texts if t.get_gid() == "count"]
    assert sum(drawn) == queries  # the numbers in the cells are the counts
    ticks = [t.get_text() for t in fig.axes[1].get_yticklabels()]  # the class matrix
    assert ticks == [names[c] for c in ids]  # rows named by class, in id order
    pyplot().close(fig)
