"""``metafit evaluate MODEL_DIR --test T`` and ``RUN --support S --test T``: the user's own
labelled test set, scored as predict would score it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploy_fixtures import image_run, support_folder, text_run
from metafit.cli.main import main
from metafit.cli.results import SCHEMAS
from metafit.deploy.adapted import AdaptedModel
from text_fixtures import sentences, write_csv


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("score")
    support = support_folder(root / "support", classes=3, per_class=2)
    assert main(["adapt", str(image_run()), "--support", str(support), "--out",
                 str(root / "model")]) == 0
    return root / "model", root


def test_a_model_directory_is_scored_as_predict_predicts(image_model, tmp_path, capsys
                                                         ) -> None:
    model, _ = image_model
    test = support_folder(tmp_path / "test", classes=3, per_class=4)  # other draws too
    capsys.readouterr()
    assert main(["evaluate", str(model), "--test", str(test), "--json", "--out",
                 str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    SCHEMAS["evaluate"].model_validate_json(out)
    report = json.loads(out)
    assert report["protocol"] == "test_set" and report["examples"] == 12
    files = sorted(str(p) for p in test.rglob("*.png"))
    rows = AdaptedModel.load(model).predict([Path(f) for f in files])
    truth = [Path(f).parent.name for f in files]
    hits = sum(r["label"] == t for r, t in zip(rows, truth, strict=True))
    assert report["accuracy"] == pytest.approx(hits / 12)
    assert sum(map(sum, report["confusion"])) == 12
    assert report["accuracy_low"] <= report["accuracy"] <= report["accuracy_high"]
    assert json.loads((tmp_path / "rep" / "test_report.json").read_text())["examples"] == 12
    assert sorted(Path(f).name for f in report["files"]) == [
        "confusion.png", "reliability.png", "test_report.json"]


def test_the_test_set_figures_show_every_count_and_bin() -> None:
    import torch

    from metafit.evaluation.classification import score_probabilities
    from metafit.runs.test_set_plots import confusion_test_figure, reliability_figure

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (60,), generator=g)
    probs = (torch.randn(60, 4, generator=g) + 2 * torch.nn.functional.one_hot(labels, 4)
             ).softmax(1)
    report = score_probabilities(probs, labels, ["alpha", "beta", "gamma", "delta"])
    ax = confusion_test_figure(report).axes[0]
    cells = [int(t.get_text()) for t in ax.texts if t.get_gid() == "count"]
    assert sum(cells) == 60 and len(cells) == 16
    assert [t.get_text() for t in ax.get_yticklabels()] == ["alpha", "beta", "gamma", "delta"]
    top, bottom = reliability_figure(report).axes[:2]
    assert sum(p.get_height() for p in bottom.patches) == 60


def test_a_run_is_adapted_on_the_support_set_then_scored(image_model, capsys) -> None:
    model, root = image_model
    support = root / "support"
    capsys.readouterr()
    assert main(["evaluate", str(model), "--test", str(support), "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(image_run()), "--support", str(support), "--test",
                 str(support), "--json"]) == 0
    adapted = json.loads(capsys.readouterr().out)
    assert adapted["confusion"] == direct["confusion"]  # the same model, built in memory


def test_text_test_set_and_its_errors(tmp_path: Path, capsys) -> None:
    support = write_csv(tmp_path / "support.csv", sentences(3, 3, seed=1))
    model = tmp_path / "model"
    assert main(["adapt", str(text_run()), "--support", str(support), "--out", str(model),
                 "--steps", "40"]) == 0
    test = write_csv(tmp_path / "test.csv", sentences(3, 5, seed=2))
    capsys.readouterr()
    assert main(["evaluate", str(model), "--test", str(test)]) == 0
    printed = capsys.readouterr().out
    assert "macro-F1" in printed and "intent_2" in printed
    stranger = write_csv(tmp_path / "stranger.csv", sentences(5, 2, seed=3))
    assert main(["evaluate", str(model), "--test", str(stranger)]) == 2
    err = capsys.readouterr().err
    assert "'intent_3', 'intent_4' are not classes of the model" in err
    assert main(["evaluate", str(model)]) == 2
    assert "give --test PATH" in capsys.readouterr().err
    assert main(["evaluate", str(text_run()), "--test", str(test)]) == 2
    assert "give --support PATH" in capsys.readouterr().err


def test_dollar_signs_in_labels_are_drawn_not_parsed_as_formulas(tmp_path: Path) -> None:
    import torch

    from metafit.evaluation.classification import score_probabilities
    from metafit.runs.episode_plots import text_episode_figure
    from metafit.runs.test_set_plots import plot_test_set

    names = ["top up $5", "$\\foo$", "fee $3 % off $", "plain"]
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (40,), generator=g)
    probs = (torch.randn(40, 4, generator=g) + 2 * torch.nn.functional.one_hot(labels, 4)
             ).softmax(1)
    files = plot_test_set(score_probabilities(probs, labels, names), tmp_path)
    assert all(Path(f).stat().st_size > 1000 for f in files)  # drawn, not crashed
    rows = [("$\\foo$", "support", "top up $5 and $3", "$\\foo$", "right"),
            ("$\\foo$", "query", "pay $ 4", "plain", "wrong")]
    fig = text_episode_figure(rows, "episode")
    fig.canvas.draw()  # matplotlib parses text when drawing: "$\foo$" raised here
    shown = [t.get_text() for t in fig.axes[0].texts]
    assert any("top up \\$5 and \\$3" in t for t in shown)


def test_control_characters_of_labels_never_reach_the_terminal(capsys) -> None:
    from metafit.cli.options import printable, write_line

    evil = "ok\x1b]0;PWNED\x07\x1b[2J\rfake row \u202eesrever\x9b"
    write_line(f"label: {evil}\tnext")
    out = capsys.readouterr().out
    assert out == ("label: ok\\x1b]0;PWNED\\x07\\x1b[2J\\rfake row \\u202eesrever\\x9b\tnext\n")
    assert not any(c in out for c in "\x1b\x07\r\u202e\x9b")
    assert printable("café 中文 a\tb\nc") == "café 中文 a\tb\nc"  # text itself untouched


def test_a_label_or_file_name_cannot_split_a_row() -> None:
    from metafit.cli.adapt import _table
    from metafit.cli.options import one_line

    assert one_line("two\nlines\tand\x1b[2J") == "two\\nlines\\tand\\x1b[2J"
    table = _table(["a\nb.png"], [{"label": "x\ny", "probabilities": {"x\ny": 0.9, "z": 0.1}}])
    lines = table.split("\n")
    assert len(lines) == 2 and "a\\nb.png" in lines[1] and "x\\ny" in lines[1]
