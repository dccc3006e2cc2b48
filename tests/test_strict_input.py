"""Bad input is a one-line error naming the file, line or key (issue 24, item 5): CSV rows
with the wrong number of fields, counts of 0 on the command line, recipes that are not
UTF-8 or not YAML, and blank lines in ``predict --from-file``."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from metafit.cli.main import main
from metafit.config.recipe import RecipeError, load_recipe, parse_overrides
from metafit.data.errors import DatasetError
from metafit.data.text_csv import TextCSV

TINY_SINUSOID = ["iterations=2", "val_every=2", "val_episodes=2", "test_episodes=4",
                 "meta_batch=2", "hidden=8", "--no-progress"]


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    """The stderr of a command that failed: exactly one line ``metafit: error: ...``."""
    err = capsys.readouterr().err
    assert err.startswith("metafit: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


# -- TextCSV: rows with another number of fields than the header --------------------------
def test_csv_row_with_an_extra_field_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "intents.csv",
                 'text,category\n"hello, quoted",greet\nhello, world,greet\nbye,leave\n')
    with pytest.raises(DatasetError) as e:
        TextCSV(path)  # before: line 3 became text 'hello' with the label 'world'
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    assert "other than the header's 2 field(s) (text, category), on line(s) 3:" in msg
    assert "quote a field that holds a comma" in msg


def test_csv_rows_with_fewer_or_more_fields_are_all_named(tmp_path: Path) -> None:
    content = "text,category\nok,a\nshort\nfine,b\ntoo,many,fields\n" + "x,y,z\n" * 20
    with pytest.raises(DatasetError, match=r"22 row\(s\) with other than the header's 2 "
                       r"field\(s\).*line\(s\) 3, 5, 6, .*\(22 lines in all\)"):
        TextCSV(write(tmp_path / "data.csv", content))


def test_csv_lenient_skips_bad_rows_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv",
                 "text,category\nhello,a\nhello, world,b\nbye,b\nalone\n\nagain,a\n")
    with pytest.warns(UserWarning, match=r"data.csv: skipped 2 row\(s\) .*line\(s\) 3, 5$"):
        ds = TextCSV(path, lenient=True)
    assert ds.texts == ["hello", "again", "bye"] and ds.classes == ["a", "b"]
    assert ds.lines == [2, 7, 4]
    only_bad = write(tmp_path / "bad.csv", "text,category\na,b,c\n")
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match=r"no data rows.*1 skip"):
        TextCSV(only_bad, lenient=True)


def test_csv_a_column_named_twice_is_an_error_not_the_first_of_them(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "text,category,text\nold,a,new\nold,b,new\n")
    with pytest.raises(DatasetError, match=r"data.csv, line 1: column\(s\) \['text'\] appear "
                                           r"more than once"):
        TextCSV(path)  # before: the first 'text' was taken silently


def test_csv_blank_lines_are_not_rows_even_before_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "\n\ntext,category\nhello,a\n\n\nbye,b\n\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # strict mode: no warning either
        ds = TextCSV(path)
    assert ds.texts == ["hello", "bye"] and ds.lines == [4, 7]
    with pytest.raises(DatasetError, match=r"data.csv, line 3: column\(s\) \['label'\]"):
        TextCSV(path, label_column="label")  # the header's own line


def test_csv_undecodable_byte_line_counts_carriage_returns(tmp_path: Path) -> None:
    raw = b"text,category\rhello,a\r\ncaf\xe9,b\r"  # old Mac and Windows line ends
    with pytest.raises(DatasetError, match=r"data.csv, line 3: not valid UTF-8"):
        TextCSV(write(tmp_path / "data.csv", raw))


# -- counts of 0 on the command line -------------------------------------------------------
@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("strict") / "run"
    assert main(["train", "sinusoid_maml", *TINY_SINUSOID, "--out", str(out)]) == 0
    return out


def test_evaluate_episodes_zero_or_negative_is_an_error(sinusoid_run: Path, capsys) -> None:
    capsys.readouterr()
    for bad in ("0", "-3"):
        assert main(["evaluate", str(sinusoid_run), "--episodes", bad]) == 2
        err = one_line_error(capsys)
        assert f"episodes must be a positive integer, got {bad}" in err
    assert main(["evaluate", str(sinusoid_run), "--steps", "-1"]) == 2
    assert "steps must be an integer >= 0, got -1" in one_line_error(capsys)
    assert not list((sinusoid_run / "report").glob("eval_*.json"))  # nothing ran
    assert main(["evaluate", str(sinusoid_run), "--episodes", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["episodes"] == 3


def test_evaluate_run_refuses_zero_episodes_before_loading(tmp_path: Path) -> None:
    from metafit.runs.trained import evaluate_run

    # not a run directory: the count is checked first
    with pytest.raises(ValueError, match=r"episodes must be a positive integer, got 0"):
        evaluate_run(tmp_path, episodes=0)
    with pytest.raises(ValueError, match=r"episodes must be a positive integer, got True"):
        evaluate_run(tmp_path, episodes=True)  # type: ignore[arg-type]


def test_report_episodes_zero_is_an_error_before_any_plot(sinusoid_run: Path, tmp_path: Path,
                                                          capsys) -> None:
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["report", str(sinusoid_run), "--out", str(out), "--episodes", "0"]) == 2
    assert "episodes must be a positive integer, got 0" in one_line_error(capsys)
    assert not out.exists()


# -- recipes that are not UTF-8 or not YAML ------------------------------------------------
def test_binary_recipe_names_the_file(tmp_path: Path, capsys) -> None:
    path = write(tmp_path / "mine.yaml", b"ways: 5\nname: caf\xe9\n")
    with pytest.raises(RecipeError, match=r"mine.yaml, line 2: not valid UTF-8 \(byte 0xe9"):
        load_recipe(path)
    assert main(["recipes", "show", str(path)]) == 2
    assert str(path) in one_line_error(capsys)


def test_yaml_errors_are_one_line_with_file_and_line(tmp_path: Path) -> None:
    cases = {"bell.yaml": ("ways: 5\nshots: 1\x07\n", r"line 2: unacceptable character #x0007"),
             "broken.yaml": ("ways: 5\nshots: [1,\n", r"line 3, column 1: expected the node"),
             "deep.yaml": ("ways: " + "[" * 2000, "nested too deeply")}
    for name, (text, expected) in cases.items():
        with pytest.raises(RecipeError) as e:
            load_recipe(write(tmp_path / name, text))
        msg = str(e.value)
        assert msg.startswith(f"recipe {tmp_path / name} ") and "\n" not in msg, msg
        assert re.search(expected, msg), msg


def test_a_yaml_alias_bomb_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    bomb = "search:\n  x:\n" + "".join(f"    {line}\n" for line in levels)  # 1.2e9 values
    assert len(bomb) < 1000
    with pytest.raises(RecipeError, match=r"holds 1,234,567,913 values once its YAML aliases "
                                          r"\(\*name\) are expanded, over the limit"):
        load_recipe(write(tmp_path / "bomb.yaml", bomb))
    shared = "base_lr: &lr 0.1\ninner_lr: *lr\n"  # an ordinary alias still works
    with pytest.raises(RecipeError, match="unknown recipe key 'base_lr'"):
        load_recipe(write(tmp_path / "alias.yaml", shared))
    assert load_recipe(write(tmp_path / "alias2.yaml", "outer_lr: &lr 0.01\ninner_lr: *lr\n")
                       ).inner_lr == 0.01


def test_recipe_that_is_not_a_mapping_or_has_odd_keys(tmp_path: Path) -> None:
    for text in ("[]", "0", "false", "''"):  # before: [] and 0 were an empty recipe
        with pytest.raises(RecipeError, match="must be a mapping of key: value"):
            load_recipe(write(tmp_path / "odd.yaml", text))
    with pytest.raises(RecipeError, match=r"unknown recipe key 1 in .*odd.yaml"):
        load_recipe(write(tmp_path / "odd.yaml", "1: 2\n"))  # before: TypeError


def test_base_errors_name_the_inheriting_file(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    loop = write(sub / "a.yaml", "base: ../sub/a.yaml\n")  # before: OSError, name too long
    with pytest.raises(RecipeError, match=r"inherits from itself"):
        load_recipe(loop)
    long = write(tmp_path / "long.yaml", "base: " + "x" * 400 + "\n")  # before: OSError
    with pytest.raises(RecipeError, match=r"recipe .*long.yaml: base: no recipe named or at"):
        load_recipe(long)
    child = write(tmp_path / "child.yaml", "base: parent.yaml\n")
    write(tmp_path / "parent.yaml", b"ways: \xff\n")
    with pytest.raises(RecipeError, match=r"parent.yaml \(the base of .*child.yaml\), line 1"):
        load_recipe(child)
    with pytest.raises(RecipeError, match="base must be a recipe name or path"):
        load_recipe(write(tmp_path / "listbase.yaml", "base: [a, b]\n"))


def test_a_value_made_of_aliases_gives_a_short_message(tmp_path: Path) -> None:
    """Four levels of ten aliases: a value whose full repr is ~120 KB (five levels are
    now refused as over MAX_RECIPE_VALUES before validation)."""
    text = "search:\n  a: &a [" + ", ".join(["abcdefgh"] * 10) + "]\n"
    for prev, name in zip("abc", "bcd", strict=True):
        text += f"  {name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]\n"
    with pytest.raises(RecipeError, match=r"ways: Input should be a valid integer") as e:
        load_recipe(write(tmp_path / "alias.yaml", text + "ways: *d\n"))
    assert len(str(e.value)) < 3000


def test_yaml_mapping_helpers_for_run_and_model_directories(tmp_path: Path) -> None:
    from metafit.config.recipe import parse_yaml_mapping, read_yaml_mapping

    config = write(tmp_path / "config.yaml", b"\x00\x01binary")
    with pytest.raises(RecipeError, match=r"config.yaml.*not valid YAML: line 1"):
        read_yaml_mapping(config, "run config")
    with pytest.raises(RecipeError, match=r"cannot read run config .*missing.yaml"):
        read_yaml_mapping(tmp_path / "missing.yaml", "run config")
    with pytest.raises(RecipeError, match=r"model/recipe.yaml, line 1: not valid UTF-8"):
        parse_yaml_mapping(b"\xfe", "model/recipe.yaml")
    with pytest.raises(RecipeError, match=r"larger than 1048576 bytes"):
        parse_yaml_mapping(b"#" * ((1 << 20) + 1), "big.yaml")
    assert read_yaml_mapping(write(tmp_path / "ok.yaml", "ways: 3\n")) == {"ways": 3}
    assert parse_yaml_mapping("", "empty.yaml") == {}


def test_override_with_undecodable_bytes_is_an_error() -> None:
    with pytest.raises(RecipeError, match=r"override 'data_root=/d/\\udcff' is not valid"):
        parse_overrides(["data_root=/d/\udcff"])  # how Python decodes a non-UTF-8 argv


# -- predict --from-file: one input per line -----------------------------------------------
@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory adapted from a linear-probe run on the tiny BERT."""
    from metafit.config.schema import make_recipe
    from metafit.training.trainer import Trainer
    from text_fixtures import sentences, shared_model_dir, write_csv

    root = tmp_path_factory.mktemp("strict-text")
    data = write_csv(root / "intents.csv", sentences(6, 5, seed=0))
    recipe = make_recipe(dict(
        name="tiny_probe", dataset="text_csv", model="text", data_root=str(data),
        text_model=str(shared_model_dir()), split_classes=False, max_length=16, ways=3,
        shots=2, queries=2, algorithm="linear_probe", adapt="head", inner_lr=0.05,
        eval_inner_steps=5, meta_batch=2, iterations=2, val_every=2, val_episodes=2,
        test_episodes=4))
    Trainer(recipe, root / "run", progress=False).fit()
    support = write_csv(root / "support.csv", sentences(3, 2, seed=5))
    out = root / "model"
    assert main(["adapt", str(root / "run"), "--support", str(support), "--out", str(out),
                 "--json"]) == 0
    return out


def test_compress_episodes_zero_is_an_error(text_model: Path, tmp_path: Path,
                                            capsys) -> None:
    capsys.readouterr()
    out = tmp_path / "pruned"
    assert main(["compress", str(text_model), "--prune", "0.5", "--out", str(out),
                 "--episodes", "0"]) == 2  # before: 0 silently meant "no measurement"
    assert "--episodes must be a positive integer, got 0" in one_line_error(capsys)
    assert not out.exists()


def test_predict_from_file_blank_line_is_an_error(text_model: Path, tmp_path: Path,
                                                  capsys) -> None:
    capsys.readouterr()
    inputs = write(tmp_path / "in.txt", "alpha0 card\n\nbeta1 help\n   \ngamma2\n")
    assert main(["predict", str(text_model), "--from-file", str(inputs)]) == 2
    err = one_line_error(capsys)
    assert f"{inputs}: line(s) 2, 4 blank" in err and "one input per line" in err
    latin = write(tmp_path / "latin.txt", b"alpha0\ncaf\xe9\n")
    assert main(["predict", str(text_model), "--from-file", str(latin)]) == 2
    assert f"{latin}, line 2: not valid UTF-8" in one_line_error(capsys)


def test_predict_from_file_outputs_line_up_with_lines(text_model: Path, tmp_path: Path,
                                                      capsys) -> None:
    capsys.readouterr()
    # a final newline and blank lines at the end are fine; U+2028 is not a line end
    inputs = write(tmp_path / "in.txt", "alpha0 card\r\nbeta1\u2028help\r\ngamma2\n\n \n")
    assert main(["predict", str(text_model), "--from-file", str(inputs), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in rows] == ["alpha0 card", "beta1\u2028help", "gamma2"]


@pytest.mark.parametrize("field", ["trials", "trial_iterations", "jobs"])
def test_tuning_counts_of_zero_are_errors(field: str) -> None:
    from metafit.tuning.study import TuneOptions

    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got 0"):
        TuneOptions(**{field: 0})
