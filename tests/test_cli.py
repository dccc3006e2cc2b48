"""The `metafit` command: help, recipes, and user errors as one-line messages."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metafit.cli.main import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("metafit")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "metafit.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_help_lists_exactly_the_implemented_verbs() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    choices = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    for verb in choices:
        assert verb in out.stdout
    assert {"recipes", "train", "evaluate", "data", "report"} <= choices


def test_recipes_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "omniglot_20w5s_maml" in listing and "sinusoid_maml" in listing
    assert main(["recipes", "show", "omniglot_5w1s_maml", "inner_steps=5"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["inner_steps"] == 5 and shown["ways"] == 5 and shown["dataset"] == "omniglot"


def test_unknown_key_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes", "show", "sinusoid_maml", "inner_step=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metafit: error: unknown recipe key 'inner_step'")
    assert "inner_steps" in err and "Traceback" not in err


def test_evaluate_a_directory_that_is_no_run(tmp_path, capsys) -> None:
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "is not a metafit run directory" in capsys.readouterr().err


def test_overrides_may_follow_options_and_verbose_may_follow_the_verb() -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(["train", "sinusoid_maml", "--out", "X", "-v",
                                           "iterations=5"])
    assert args.verbose and args.out == "X" and extra == ["iterations=5"]
    assert not parser.parse_known_args(["train", "r"])[0].verbose
    assert parser.parse_known_args(["-v", "train", "r"])[0].verbose


def test_overrides_after_options_reach_the_recipe(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "sinusoid_maml", "--out", str(out), "--no-progress",
                 "iterations=2", "val_every=2", "meta_batch=2", "val_episodes=2"]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["iterations"] == 2 and config["meta_batch"] == 2
    with pytest.raises(SystemExit):
        main(["train", "sinusoid_maml", "--bogus"])  # not an override: still an error
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_help_is_fast_and_python_m_metafit_works() -> None:
    # building every verb's parser imports no torch (`metafit --help` in a fraction of a
    # second), and `python -m metafit` is the command
    code = ("import sys; from metafit.cli.main import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "False", done.stderr
    done = subprocess.run([sys.executable, "-m", "metafit", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and "quickstart" in done.stdout


def test_every_option_of_every_verb_has_help() -> None:
    import argparse

    sub = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    missing = [(verb, action.option_strings or action.dest)
               for verb, parser in sub.choices.items() for action in parser._actions
               if not action.help and not isinstance(action, argparse._HelpAction)]
    assert missing == []


def test_recipe_keys_are_listed_described_and_documented(
        capsys: pytest.CaptureFixture[str]) -> None:
    from pathlib import Path

    from metafit.config.keys import key_rows, keys_markdown
    from metafit.config.schema import FIELDS

    assert [row[0] for row in key_rows()] == list(FIELDS)
    assert [row[0] for row in key_rows() if not row[3]] == []  # every key says what it does
    assert main(["recipes", "keys"]) == 0
    printed = capsys.readouterr().out
    assert printed == keys_markdown() and "| `inner_lr` | float | 0.4 |" in printed
    docs = (Path(__file__).resolve().parent.parent / "docs" / "recipes.md").read_text()
    assert keys_markdown() in docs, "docs/recipes.md is stale: regenerate it"


def test_threads_on_every_verb_that_computes(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from metafit.cli.options import apply_threads

    parser = build_parser()
    for argv in (["evaluate", "RUN"], ["report", "RUN"],
                 ["adapt", "RUN", "--support", "S", "--out", "O"], ["predict", "MODEL", "x"],
                 ["compress", "MODEL", "--out", "O"], ["export", "MODEL"]):
        args, _ = parser.parse_known_args([*argv, "--threads", "1"])
        assert args.torch_threads == 1, argv
    before = torch.get_num_threads()
    try:
        apply_threads(parser.parse_known_args(["evaluate", "RUN", "--threads", "1"])[0])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main(["evaluate", "RUN", "--threads", "0"]) == 2
    assert "--threads must be a positive count" in capsys.readouterr().err


@pytest.mark.parametrize(("blocked", "extra", "verb"), [
    ("mlflow", "track", ["train", "sinusoid_maml", "iterations=2", "mlflow=true"]),
    ("torch.utils.tensorboard", "track", ["train", "sinusoid_maml", "iterations=2",
                                          "tensorboard=true"]),
    ("peft", "text", ["train", "TEXT", "iterations=2"]),
    ("optuna", "tune", ["tune", "sinusoid_maml_tune", "--trials", "1"]),
])
def test_a_missing_optional_package_names_its_extra_and_leaves_nothing(
        blocked: str, extra: str, verb: list[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from text_fixtures import sentences, write_csv

    if "TEXT" in verb:  # a text recipe on a small CSV: peft is imported to build the model
        csv = write_csv(tmp_path / "intents.csv", sentences(12, 20))
        verb = ["train", "banking77_maml_lora", f"data_root={csv}", "split_classes=false",
                "iterations=2"]
    monkeypatch.setitem(sys.modules, blocked, None)  # its import fails
    out = tmp_path / "out"
    assert main([*verb, "--out", str(out)]) == 2
    assert f"metafit[{extra}]" in capsys.readouterr().err
    assert not out.exists()


def test_a_closed_output_pipe_is_not_a_traceback() -> None:
    proc = subprocess.run(f"{sys.executable} -m metafit recipes | head -n 1", shell=True,
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.count("\n") == 1
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
