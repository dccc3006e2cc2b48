"""Properties of the input parsers (issue 24, item 6), checked with Hypothesis.

Whatever the bytes, the recipe reader returns a :class:`Recipe` or raises
:class:`RecipeError` naming the file, and the CSV reader loads a consistent dataset or
raises :class:`DatasetError` naming the file: never another exception. Rows written by
:mod:`csv` come back exactly. Every property is derandomised (the same examples on every
run) and keeps no example database.
"""

from __future__ import annotations

import csv
import io
import itertools
import string
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from metafit.config.recipe import RecipeError, load_recipe, parse_overrides
from metafit.config.schema import FIELDS, Recipe
from metafit.data.errors import DatasetError
from metafit.data.text_csv import TextCSV


def fixed(examples: int) -> settings:
    """Deterministic settings: ``examples`` examples, no deadline, no database."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


_counter = itertools.count()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory for the examples' files (module-scoped: Hypothesis runs the test body
    many times per call, so it takes no function-scoped fixture such as ``tmp_path``)."""
    return tmp_path_factory.mktemp("properties")


def new_file(root: Path, name: str, data: bytes) -> Path:
    """A fresh file ``root/<n>/name`` holding ``data``."""
    folder = root / str(next(_counter))
    folder.mkdir()
    path = folder / name
    path.write_bytes(data)
    return path


# -- strategies ------------------------------------------------------------------------------
# Text with the characters that matter to YAML and CSV, plus any unicode.
SPECIAL = ",\"'\n\r\t :#-[]{}&*!|>%@`\\\x00\x07\x85\u2028\ufeff"
unicode = st.characters(exclude_categories=["Cs"])  # any character UTF-8 can encode
tricky_text = st.text(st.sampled_from(SPECIAL) | unicode, max_size=40)
scalars = (st.none() | st.booleans() | st.integers(-10**30, 10**30)
           | st.floats(allow_nan=True) | tricky_text)
yaml_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(tricky_text, inner, max_size=4), max_leaves=12)
recipe_keys = st.sampled_from([*FIELDS, "base", "metafit_version"]) | tricky_text
recipe_numbers = st.sampled_from(["ways", "shots", "queries", "inner_steps", "iterations",
                                  "hidden", "max_length", "inner_lr", "test_episodes"])


@st.composite
def recipe_documents(draw: st.DrawFn) -> bytes:
    """A YAML recipe: a mapping of (mostly) recipe keys, sometimes with a base, dumped and
    sometimes damaged; or arbitrary text or bytes."""
    kind = draw(st.sampled_from(["mapping", "numbers", "bytes", "text"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(tricky_text).encode("utf-8")
    values: dict[Any, Any] = {}
    if draw(st.booleans()):
        values["base"] = draw(st.sampled_from(["sinusoid_maml", "_sinusoid", "nope"])
                              | tricky_text)
    if kind == "numbers":  # keys a valid recipe has, values near their bounds
        values.update(draw(st.dictionaries(recipe_numbers, st.integers(-2, 3)
                                           | st.floats(-1, 2) | st.sampled_from(["1e-3", ""]),
                                           max_size=4)))
    else:
        values.update(draw(st.dictionaries(recipe_keys, yaml_values, max_size=5)))
    try:
        data = yaml.safe_dump(values, allow_unicode=True).encode("utf-8")
    except yaml.YAMLError:  # a value YAML cannot represent
        data = repr(values).encode("utf-8")
    cut = draw(st.integers(0, len(data)))
    if draw(st.integers(0, 3)) == 0:  # damage it: cut it short and add bytes
        data = data[:cut] + draw(st.binary(max_size=8))
    return data


@st.composite
def csv_documents(draw: st.DrawFn) -> str:
    """A CSV-like document: a header, then rows that are mostly right (a text, one comma,
    a label, one line end) and sometimes not (quotes, other separators, blank fields)."""
    header = draw(st.sampled_from(["text,category"] * 4 + [
        "text,category,", "category,text", "\ufefftext,category", "\ntext,category", "text",
        "text,category,id"]))
    parts = [header]
    ends = st.sampled_from(["\n"] * 6 + ["\r\n", "\r", "\n\n", "\n \n"])
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 5)):  # a good row
            text = draw(st.text(st.sampled_from("ab é,\"\n"), min_size=1, max_size=6))
            if not text.strip() or set(text) & set(',"\n'):
                text = '"' + text.replace('"', '""') + '"'  # as csv.writer quotes
            parts.append(text + "," + draw(st.sampled_from(["a", "b", " b"])))
            continue
        text = draw(st.text(st.sampled_from(' ab"é\x00\r\n,'), max_size=6))
        if draw(st.booleans()):
            text = '"' + text.replace('"', '""') + '"'
        sep = draw(st.sampled_from(["", ",", ",,", ", "]))
        label = draw(st.sampled_from(["a", "", '"b"', "a,1", '"a', "\x00"]))
        parts.append(text + sep + label)
    return "".join(p + draw(ends) for p in parts)


def csv_bytes() -> st.SearchStrategy[bytes]:
    """Bytes that are often a CSV with a text,category header, sometimes damaged."""
    documents = csv_documents().map(lambda s: s.encode("utf-8"))
    return (documents | documents | st.binary(max_size=80)
            | st.builds(lambda d, b: d + b, documents, st.binary(max_size=10)))


# -- the recipe reader -----------------------------------------------------------------------
@fixed(400)
@given(data=recipe_documents())
def test_any_recipe_file_gives_a_recipe_or_a_recipe_error_naming_it(scratch: Path,
                                                                     data: bytes) -> None:
    path = new_file(scratch, "mine.yaml", data)
    try:
        recipe = load_recipe(path)
    except RecipeError as e:
        event("RecipeError")
        message = str(e)
        assert str(path) in message, message
        assert "\n" not in message, message
        assert len(message) < 5000
    else:
        event("a Recipe")
        assert isinstance(recipe, Recipe)


override_keys = st.integers(0, 9).flatmap(
    lambda k: recipe_numbers if k < 7 else st.sampled_from([*FIELDS, "base"]) if k < 9
    else tricky_text)
override_values = st.integers(0, 9).flatmap(
    lambda k: st.integers(-2, 50).map(str) if k < 6 else st.floats(-1, 2).map(str) if k < 7
    else tricky_text if k < 8 else st.sampled_from(
        ["\udcff", "[[[", "!!python/object:os.system", "1e-3", "null", "true", "[1, 2, 3]",
         "{a: 1}"]))
override_pairs = st.lists(
    st.builds(lambda k, sep, v: f"{k}{sep}{v}", override_keys,
              st.sampled_from(["="] * 12 + ["", "==", " = "]), override_values),
    max_size=3)


@fixed(400)
@given(pairs=override_pairs)
def test_any_overrides_give_a_recipe_or_a_recipe_error(pairs: list[str]) -> None:
    try:
        overrides = parse_overrides(pairs)
    except RecipeError as e:
        event("parse_overrides: RecipeError")
        assert "\n" not in str(e) or any("\n" in p for p in pairs)
        return
    assert set(overrides) <= set(FIELDS)
    try:
        recipe = load_recipe("sinusoid_maml", overrides)
    except RecipeError as e:
        event("load_recipe: RecipeError")
        assert "sinusoid_maml" in str(e) or "overrides" in str(e), str(e)
    else:
        event("a Recipe")
        assert isinstance(recipe, Recipe)
        for key, value in overrides.items():
            if isinstance(value, int) and not isinstance(value, bool):
                assert getattr(recipe, key) == value


@fixed(300)
@given(values=st.dictionaries(recipe_keys, yaml_values, max_size=5)
       | st.dictionaries(recipe_numbers, st.integers(-2, 3) | st.floats(-1, 2), max_size=4))
def test_any_dict_gives_a_recipe_or_a_recipe_error_naming_where(values: dict[Any, Any]
                                                                 ) -> None:
    from metafit.config.schema import make_recipe

    try:
        recipe = make_recipe(dict(values), "the test's dict")
    except RecipeError as e:
        event("RecipeError")
        assert "the test's dict" in str(e) and len(str(e)) < 5000, str(e)
    else:
        event("a Recipe")
        assert isinstance(recipe, Recipe)
        assert all(getattr(recipe, k) == v for k, v in values.items()
                   if isinstance(v, int) and not isinstance(v, bool))


# -- the CSV reader --------------------------------------------------------------------------
def check_dataset(ds: TextCSV) -> None:
    """The invariants of a loaded TextCSV."""
    n = len(ds)
    assert n > 0 and len(ds.texts) == len(ds.labels) == len(ds.lines) == ds.targets.numel() == n
    assert ds.classes == sorted(set(ds.classes)) and ds.num_classes == len(ds.classes)
    assert int(ds.counts.sum()) == n and bool((ds.counts > 0).all())
    assert torch.equal(ds.offsets, torch.cumsum(ds.counts, 0) - ds.counts)
    assert ds.targets.tolist() == sorted(ds.targets.tolist())  # grouped by class
    for c, name in enumerate(ds.classes):
        examples = ds.examples(c)
        assert len(examples) == int(ds.counts[c])
        start = int(ds.offsets[c])
        assert ds.labels[start:start + len(examples)] == [name] * len(examples)
    for text, label, line in zip(ds.texts, ds.labels, ds.lines, strict=True):
        assert text and text == text.strip() and label and label == label.strip()
        assert line >= 2
    assert torch.equal(ds.gather(torch.arange(n)), torch.arange(n))


@fixed(500)
@given(data=csv_bytes())
def test_any_csv_bytes_load_consistently_or_raise_a_dataset_error(scratch: Path,
                                                                  data: bytes) -> None:
    path = new_file(scratch, "data.csv", data)
    try:
        ds = TextCSV(path)
    except DatasetError as e:
        event("DatasetError")
        assert str(path) in str(e) and "\n" not in str(e), str(e)
    else:
        event("loaded")
        check_dataset(ds)


two_fields = st.tuples(tricky_text.filter(str.strip), tricky_text.filter(str.strip)).map(list)
rows = st.lists(st.integers(0, 11).flatmap(
    lambda k: two_fields if k else st.lists(tricky_text, max_size=3)), max_size=8)


@fixed(400)
@given(rows=rows)
def test_any_rows_load_exactly_when_each_has_two_fields(scratch: Path,
                                                        rows: list[list[str]]) -> None:
    """The oracle: an empty row is a blank line (skipped); every other row must have two
    fields, neither blank."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["text", "category"])
    writer.writerows(rows)
    path = new_file(scratch, "rows.csv", buf.getvalue().encode("utf-8"))
    records = [r for r in rows if r]
    valid = bool(records) and all(len(r) == 2 and r[0].strip() and r[1].strip()
                                  for r in records)
    try:
        ds = TextCSV(path)
    except DatasetError as e:
        event("DatasetError")
        assert not valid, f"valid rows refused: {e}"
        assert str(path) in str(e)
    else:
        event("loaded")
        assert valid
        check_dataset(ds)
        assert sorted(zip(ds.texts, ds.labels, strict=True)) == sorted(
            (t.strip(), c.strip()) for t, c in records)


texts = st.text(st.sampled_from(SPECIAL) | unicode, min_size=1, max_size=40).filter(str.strip)
labels = st.text(string.ascii_letters + string.digits + ",\"' \n_é", min_size=1,
                 max_size=6).filter(str.strip)


@fixed(400)
@given(pairs=st.lists(st.tuples(texts, labels), min_size=1, max_size=10))
def test_rows_written_by_csv_round_trip(scratch: Path, pairs: list[tuple[str, str]]) -> None:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["text", "category"])
    writer.writerows(pairs)
    ds = TextCSV(new_file(scratch, "round.csv", buf.getvalue().encode("utf-8")))
    check_dataset(ds)
    expected = {c: [t.strip() for t, lab in pairs if lab.strip() == c] for c in ds.classes}
    assert ds.classes == sorted({lab.strip() for _, lab in pairs})
    for c, name in enumerate(ds.classes):
        assert ds.examples(c) == expected[name]  # file order kept within a class


# -- predict --from-file -----------------------------------------------------------------------
@fixed(300)
@given(lines=st.lists(texts.filter(lambda s: not set(s) & set("\n\r\ufeff")), max_size=8),
       ending=st.sampled_from(["", "\n", "\r\n", "\n\n  \n"]),
       blank_at=st.none() | st.integers(0, 7))
def test_from_file_gives_one_input_per_line(scratch: Path, lines: list[str], ending: str,
                                            blank_at: int | None) -> None:
    from metafit.cli.adapt import _read_lines

    content = list(lines)
    if blank_at is not None and blank_at < len(lines):
        content.insert(blank_at, " ")
    path = new_file(scratch, "inputs.txt", ("\n".join(content) + ending).encode("utf-8"))
    try:
        read = _read_lines(str(path))
    except ValueError as e:
        event("blank line refused")
        assert blank_at is not None and blank_at < len(lines)
        assert f"{path}: line(s) {blank_at + 1} blank" in str(e)
    else:
        assert read == lines
