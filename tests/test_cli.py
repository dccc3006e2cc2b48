"""The `metafit` command: help, recipes, and user errors as one-line messages."""

from __future__ import annotations

import shutil
import subprocess
import sys

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
