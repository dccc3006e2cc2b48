"""Every verb's ``--json`` output validates against its documented schema
(:mod:`metafit.cli.results`, docs/cli-json.md), on tiny real runs, and says what was done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from metafit.cli.main import build_parser, main
from metafit.cli.results import SCHEMAS, schemas_markdown

DOCS = Path(__file__).resolve().parent.parent / "docs" / "cli-json.md"
#: A sinusoid MAML run of seconds.
TINY = ["hidden=8", "meta_batch=2", "iterations=3", "val_every=3", "val_episodes=3",
        "test_episodes=4", "log_every=1"]


def run_json(capsys: pytest.CaptureFixture[str], verb: str, *args: str) -> Any:
    """Run ``metafit VERB ARGS --json``; its stdout is exactly one line of strict JSON
    that ``verb``'s model accepts."""
    capsys.readouterr()
    assert main([verb, *args, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1, out[:500]
    data = json.loads(out, parse_constant=lambda c: pytest.fail(f"{c} is not strict JSON"))
    SCHEMAS[verb].model_validate_json(out)
    return data


@pytest.fixture(scope="module")
def sin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("json") / "run"
    assert main(["train", "sinusoid_maml", "--out", str(out), "--no-progress", *TINY]) == 0
    return out


def test_every_verb_with_a_result_has_json_and_a_schema() -> None:
    sub = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    with_json = {verb for verb, parser in sub.choices.items()
                 if any("--json" in a.option_strings for a in parser._actions)}
    assert with_json == set(SCHEMAS) == set(sub.choices) - {"serve"}


def test_the_schemas_are_documented_and_strict() -> None:
    assert schemas_markdown() in DOCS.read_text(encoding="utf-8"), \
        "docs/cli-json.md is stale: regenerate it (python -m metafit.cli.results)"
    with pytest.raises(ValidationError, match="Extra inputs"):
        SCHEMAS["adapt"].model_validate({"out": "m", "kind": "image", "labels": ["a"],
                                         "algorithm": "maml", "steps": 1, "support_size": 1,
                                         "support_accuracy": 1.0, "surprise": 1})


def test_train_json_stays_one_line_with_the_progress_bar_on(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    # with a terminal on stderr the bar and its validation lines are drawn there, never
    # on stdout (they once went to stdout and broke `| jq`)
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    train = run_json(capsys, "train", "sinusoid_maml", "--out", str(tmp_path / "bar"), *TINY)
    assert train["iteration"] == 3
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    capsys.readouterr()
    assert main(["train", "sinusoid_maml", "--out", str(tmp_path / "bar2"), *TINY]) == 0
    err = capsys.readouterr().err
    assert "iteration 3: validation mse" in err and "it/s" in err


def test_train_draws_no_bar_off_a_terminal(tmp_path: Path, capsys,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    capsys.readouterr()
    assert main(["train", "sinusoid_maml", "--out", str(tmp_path / "log"), *TINY]) == 0
    captured = capsys.readouterr()
    assert "it/s" not in captured.err and "iteration 3: validation" not in captured.out


def test_train_evaluate_report_json(sin_run: Path, tmp_path: Path, capsys) -> None:
    train = run_json(capsys, "train", "sinusoid_maml", "--out", str(tmp_path / "t"),
                     "--no-progress", *TINY)
    assert (train["status"], train["iteration"], train["metric"]) == ("complete", 3, "mse")
    assert train["best_iteration"] == 3 and train["best_score"] > 0
    evaluation = run_json(capsys, "evaluate", str(sin_run), "--episodes", "4")
    assert evaluation["episodes"] == 4 and len(evaluation["per_episode"]) == 4
    assert evaluation["run"] == str(sin_run) and evaluation["checkpoint"] == "best"
    report = run_json(capsys, "report", str(sin_run), "--episodes", "3", "--out",
                      str(tmp_path / "rep"))
    assert all(Path(f).is_file() for f in report["files"])
    assert report["results"]["maml"]["episodes"] == 3


def test_recipes_data_json(capsys) -> None:
    listed = run_json(capsys, "recipes")
    assert {"name": "sinusoid_maml", "description": "maml on the sinusoid task family"} \
        in listed["recipes"]
    shown = run_json(capsys, "recipes", "show", "sinusoid_maml", "inner_steps=3")
    assert shown["recipe"]["inner_steps"] == 3
    keys = run_json(capsys, "recipes", "keys")
    assert any(k["key"] == "inner_lr" and k["description"] for k in keys["keys"])
    recommended = run_json(capsys, "recipes", "recommend", "characters")
    assert recommended["recommendations"][0]["commands"][0].startswith("metafit train ")
    data = run_json(capsys, "data", "sinusoid_maml")
    assert [s["kind"] for s in data["splits"]] == ["task_family"] * 3


@pytest.mark.filterwarnings("ignore:Attempting to set identical low and high xlims")
def test_tune_json(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "t.yaml"
    recipe.write_text(yaml.safe_dump({"base": "sinusoid_maml", "hidden": 8, "meta_batch": 2,
                                      "val_episodes": 3, "val_every": 2, "log_every": 2,
                                      "search": {"inner_steps": [1, 2]}}))
    tune = run_json(capsys, "tune", str(recipe), "--trials", "1", "--trial-iterations", "2",
                    "--out", str(tmp_path / "tune"), "--report")
    assert tune["finished"] == 1 and tune["best_params"]["inner_steps"] in (1, 2)
    assert tune["report_files"] and all(Path(f).is_file() for f in tune["report_files"])


def test_bench_json(tmp_path: Path, capsys) -> None:
    bench = run_json(capsys, "bench", "--quick", "--algorithms", "maml", "--problems",
                     "sinusoid", "--peers", "loop", "--repeats", "1", "--json-out",
                     str(tmp_path / "rows.json"))
    assert [r["config"]["algorithm"] for r in bench["rows"]] == ["maml"]
    assert set(bench["rows"][0]["seconds"]) == {"metafit", "loop"}
    assert json.loads((tmp_path / "rows.json").read_text()) == bench["rows"]


@pytest.mark.filterwarnings("ignore:the model has no Linear layer")
def test_adapt_predict_compress_export_json(tmp_path: Path, capsys) -> None:
    from deploy_fixtures import image_run, support_folder

    support = support_folder(tmp_path / "support")
    model = tmp_path / "model"
    adapt = run_json(capsys, "adapt", str(image_run()), "--support", str(support), "--out",
                     str(model))
    assert adapt["labels"] == ["label_0", "label_1", "label_2"]
    update = run_json(capsys, "adapt", "--update", str(model), "--support", str(support))
    assert update["version"] == 2 and update["support_size"] == 12
    versions = run_json(capsys, "versions", str(model))
    assert versions["current"] == 2 and len(versions["versions"]) == 2
    predict = run_json(capsys, "predict", str(model), str(support / "label_1"))
    assert len(predict) == 2 and all(abs(sum(p["probabilities"].values()) - 1) < 1e-5
                                     for p in predict)
    compress = run_json(capsys, "compress", str(model), "--out", str(tmp_path / "small"),
                        "--quantize", "int8")
    assert compress["compression"]["quantize"] == "int8"
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    export = run_json(capsys, "export", str(model), "--out", str(tmp_path / "onnx"))
    assert export["max_abs_diff"] <= export["tolerance"]


def test_quickstart_json(tmp_path: Path, capsys) -> None:
    quick = run_json(capsys, "quickstart", "--size", "tiny", "--out", str(tmp_path / "q"),
                     "--no-progress")
    assert {r["method"] for r in quick["rows"]} == {"maml", "protonet", "finetune", "scratch"}
    assert Path(quick["report"]).is_file()
