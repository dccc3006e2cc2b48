"""The README's four-command walk ("Your intents, scored, calibrated, saying 'none of
these'") runs as written: the lines between ``<!-- walk:start -->`` and
``<!-- walk:end -->`` are executed in order in a fresh folder holding the user's two
CSVs, with ``$METAFIT_DATA`` pointing at a small synthetic BANKING77-shaped dataset instead
of the real one (the only change), and the real all-MiniLM-L6-v2 encoder of the recipe."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import pytest

from metafit.cli.main import main
from text_fixtures import sentences, write_csv

pytest.importorskip("transformers")

README = Path(__file__).resolve().parent.parent / "README.md"


def walk_lines() -> list[str]:
    """The walk's shell lines (comments and blank lines dropped)."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"<!-- walk:start -->\n```bash\n(.*?)```\n<!-- walk:end -->", text,
                      flags=re.S)
    assert block, "README.md has no walk block"
    lines = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [shlex.join(words) for words in lines if words]


def test_the_walk_is_four_commands() -> None:
    lines = walk_lines()
    commands = [line for line in lines if line.startswith("metafit ")]
    assert len(commands) == 4 and len(lines) == 5
    assert lines[0].startswith("export METAFIT_DATA=")


def _fixtures(root: Path) -> None:
    """BANKING77-shaped pool (77 synthetic intents) under root/data, and the user's files:
    6 intents with 6 examples each; a test set of 5 more sentences per intent and 10 of
    intents the user never named (out of scope)."""
    (root / "data" / "banking77").mkdir(parents=True)
    write_csv(root / "data" / "banking77" / "train.csv", sentences(77, 16, seed=1))
    mine = [(t, f"mine_{c}") for t, c in
            ((t, int(label.split("_")[1])) for t, label in sentences(6, 11, seed=2))]
    support = [row for i, row in enumerate(mine) if i % 11 < 6]
    test = [row for i, row in enumerate(mine) if i % 11 >= 6]
    foreign = [(t, "something_else") for t, label in sentences(40, 1, seed=3)
               if int(label.split("_")[1]) >= 30]
    write_csv(root / "my_examples.csv", support)
    write_csv(root / "my_test.csv", test + foreign)


def test_the_readme_walk_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    _fixtures(tmp_path)
    monkeypatch.chdir(tmp_path)
    outputs = []
    for line in walk_lines():
        words = shlex.split(line)
        if words[0] == "export":
            name, _ = words[1].split("=", 1)
            monkeypatch.setenv(name, str(tmp_path / "data"))
            continue
        assert words[0] == "metafit"
        assert main(words[1:]) == 0, line
        outputs.append(capsys.readouterr().out)

    spec = json.loads((tmp_path / "models" / "intents" / "model.json").read_text())
    t = spec["adaptation"]["temperature"]
    assert math.isfinite(t) and t != 1.0  # calibrated
    reject = spec["reject"]
    assert reject["label"] == "unknown" and math.isfinite(reject["threshold"])
    assert reject["recall"] == 0.95

    scored = outputs[2]
    accuracy = float(re.search(r"accuracy ([\d.]+)%", scored).group(1))  # type: ignore[union-attr]
    assert accuracy > 50.0  # chance: 16.7%
    assert "none of these" in scored and "out-of-scope recall" in scored
    assert "(30 in-scope, 10 out-of-scope)" in scored

    predicted = outputs[3].splitlines()[-1]
    assert predicted.startswith("is there a fee for topping up?")
    label = predicted.split()[7]
    assert label == "unknown" or label.startswith("mine_")
