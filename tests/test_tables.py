"""Tables of labelled examples in every format (JSON Lines here; CSV has
tests/test_text_csv.py): the same rows from each, strict errors naming the file and the
lines or rows, size caps checked first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metafit.data.errors import DatasetError
from metafit.data.tables import read_table, text_rows
from metafit.data.text_csv import TextCSV
from table_fixtures import write_jsonl

TEXTS = ["card not here", "lost my card", "hello there", "where is it"]
LABELS = ["arrival", "lost", "greeting", "arrival"]


# -- JSON Lines --------------------------------------------------------------------------

def test_jsonl_rows_and_text_dataset(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    lines = [json.dumps({"text": t, "category": c, "extra": 1})
             for t, c in zip(TEXTS, LABELS, strict=True)]
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n",
                    encoding="utf-8")
    rows = text_rows(path, "text", "category")
    assert rows.inputs == TEXTS and rows.labels == LABELS
    assert rows.places == [1, 2, 4, 5] and rows.unit == "line"  # the blank line 3 skipped
    ds = TextCSV(path)
    assert ds.classes == ["arrival", "greeting", "lost"] and ds.counts.tolist() == [2, 1, 1]
    assert ds.examples(0) == ["card not here", "where is it"] and ds.lines == [1, 5, 4, 2]


def test_jsonl_integer_labels_and_unicode_line_separators(tmp_path: Path) -> None:
    text = "one\u2028two"  # str.splitlines would cut the line here
    path = write_jsonl(tmp_path / "t.jsonl", [{"s": text, "y": 3}, {"s": "x", "y": "b "}])
    rows = read_table(path, "s", "y")
    assert rows.inputs == [text, "x"] and rows.labels == ["3", "b"]


def test_jsonl_every_problem_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "category": "a"}\n'  # 1
                    "not json\n"  # 2
                    "[1, 2]\n"  # 3
                    '{"category": "a"}\n'  # 4
                    '{"text": "x", "category": true}\n'  # 5
                    '{"text": "y", "category": " "}\n'  # 6
                    '{"text": 5, "category": "a"}\n', encoding="utf-8")  # 7
    with pytest.raises(DatasetError) as e:
        text_rows(path, "text", "category")
    msg = str(e.value)
    assert msg.startswith(f"{path}: ")
    for part in ("not valid JSON on line(s) 2", "not a JSON object on line(s) 3",
                 "missing or null 'text' on line(s) 4",
                 "'category', or not a string or an integer on line(s) 5",
                 "empty 'category' on line(s) 6"):
        assert part in msg
    path.write_text('{"text": 5, "category": "a"}\n', encoding="utf-8")
    with pytest.raises(DatasetError, match=r"'text' that is not a string on line\(s\) 1"):
        text_rows(path, "text", "category")


def test_jsonl_size_cap_and_bytes_checked_before_parsing(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [{"text": "a" * 100, "category": "c"}])
    with pytest.raises(DatasetError, match=r"t.jsonl: 1\d\d bytes, over the limit of 50"):
        read_table(path, "text", "category", max_bytes=50)
    path.write_bytes(b'{"text": "ok", "category": "a"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DatasetError, match=r"t.jsonl, line 2: not valid UTF-8"):
        read_table(path, "text", "category")
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="no rows"):
        read_table(path, "text", "category")


def test_unknown_suffix(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text("text\tcategory\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"unknown table format '.tsv'.*\.jsonl"):
        read_table(tmp_path / "t.tsv", "text", "category")
