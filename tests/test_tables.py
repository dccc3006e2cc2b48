"""Tables of labelled examples in every format (JSON Lines, Parquet, ``datasets``
directories; CSV has tests/test_text_csv.py): the same rows from each, strict errors
naming the file and the lines or rows, size caps checked first, and image paths that
cannot lead out of the table's folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from metafit.data.errors import DatasetError
from metafit.data.tables import image_rows, read_table, text_rows
from metafit.data.text_csv import TextCSV
from table_fixtures import png, write_arrow_dir, write_jsonl, write_parquet


@pytest.fixture
def pa():  # type: ignore[no-untyped-def]
    """pyarrow (the data extra); the tests of Parquet and Arrow are skipped without it."""
    return pytest.importorskip("pyarrow")

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
                    '{"text": 5, "category": "a"}\n'  # 7
                    '{"text": "  ", "category": "a"}\n', encoding="utf-8")  # 8
    with pytest.raises(DatasetError) as e:
        text_rows(path, "text", "category")
    msg = str(e.value)
    assert msg.startswith(f"{path}: ")
    # every problem in one message: the cells' too, not in a second round once the rest
    # is fixed
    for part in ("not valid JSON on line(s) 2", "not a JSON object on line(s) 3",
                 "missing or null 'text' on line(s) 4",
                 "'category', or not a string or an integer on line(s) 5",
                 "empty 'category' on line(s) 6", "'text' that is not a string on line(s) 7",
                 "empty 'text' on line(s) 8"):
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


def test_unknown_suffix_and_plain_directory(tmp_path: Path) -> None:
    (tmp_path / "t.tsv").write_text("text\tcategory\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"unknown table format '.tsv'.*\.parquet"):
        read_table(tmp_path / "t.tsv", "text", "category")
    with pytest.raises(DatasetError, match="not one written by datasets' save_to_disk"):
        read_table(tmp_path, "text", "category")


# -- Parquet -----------------------------------------------------------------------------

def test_parquet_texts_with_string_integer_and_categorical_labels(pa: Any, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", {"text": TEXTS, "category": LABELS})
    rows = text_rows(path, "text", "category")
    assert rows.inputs == TEXTS and rows.labels == LABELS
    assert rows.places == [0, 1, 2, 3] and rows.unit == "row"
    ints = write_parquet(tmp_path / "i.parquet", {"text": TEXTS, "label": [2, 0, 1, 2]})
    assert read_table(ints, "text", "label").labels == ["2", "0", "1", "2"]
    codes = pa.array(LABELS).dictionary_encode()  # a pandas categorical's form
    cats = write_parquet(tmp_path / "c.parquet", {"text": TEXTS, "category": codes})
    assert read_table(cats, "text", "category").labels == LABELS
    assert TextCSV(path).classes == ["arrival", "greeting", "lost"]


def test_parquet_nulls_and_empty_labels_name_the_rows(pa: Any, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", {"text": ["a", None, "c", " "],
                                                  "category": ["x", "y", None, ""]})
    with pytest.raises(DatasetError) as e:
        text_rows(path, "text", "category")
    msg = str(e.value)
    assert "null 'text' on row(s) 1" in msg and "null 'category' on row(s) 2" in msg
    assert "empty 'category' on row(s) 3" in msg
    path = write_parquet(tmp_path / "t.parquet", {"text": ["a", " "], "category": [None, "y"]})
    with pytest.raises(DatasetError) as e:
        text_rows(path, "text", "category")
    assert "null 'category' on row(s) 0" in str(e.value)
    assert "empty 'text' on row(s) 1" in str(e.value)
    path = write_parquet(tmp_path / "t.parquet", {"text": ["a", " "], "category": ["x", "y"]})
    with pytest.raises(DatasetError, match=r"empty 'text' on row\(s\) 1"):
        text_rows(path, "text", "category")


def test_parquet_wrong_types_missing_columns_and_not_parquet(pa: Any, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "t.parquet", {"text": ["a"], "score": [0.5]})
    with pytest.raises(DatasetError, match=r"\['category'\] not found.*\['text', 'score'\]"):
        read_table(path, "text", "category")
    with pytest.raises(DatasetError, match="column 'score' has type double; a label column"):
        read_table(path, "text", "score")
    with pytest.raises(DatasetError, match="column 'score' has type double; an input column"):
        read_table(path, "score", "text")
    fake = tmp_path / "fake.parquet"
    fake.write_bytes(b"not parquet at all")
    with pytest.raises(DatasetError, match="fake.parquet: cannot read it as Parquet"):
        read_table(fake, "text", "category")


def test_parquet_declared_uncompressed_size_is_capped(pa: Any, tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "z.parquet", {"text": ["a" * 20_000] * 50,
                                                  "category": ["x"] * 50})
    size = path.stat().st_size
    assert size < 5_000  # compresses to almost nothing
    with pytest.raises(DatasetError, match=r"declare \d+ bytes uncompressed, over the limit"):
        read_table(path, "text", "category", max_bytes=size + 1_000)


def test_pyarrow_missing_or_too_old_names_the_extra(pa: Any, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_parquet(tmp_path / "t.parquet", {"text": ["a"], "category": ["x"]})
    monkeypatch.setattr(pa, "__version__", "14.0.0")
    with pytest.raises(DatasetError, match=r"pyarrow >= 15 \(found 14.0.0.*CVE-2023-47248"):
        read_table(path, "text", "category")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails
    with pytest.raises(DatasetError, match=r"needs pyarrow \(the data extra: pip install"):
        read_table(path, "text", "category")


# -- datasets directories ----------------------------------------------------------------

def test_save_to_disk_directory_with_class_label_names(pa: Any, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": TEXTS, "label": [1, 0, 0, 1]}, features=features)
    ds.save_to_disk(str(tmp_path / "ds"))
    rows = text_rows(tmp_path / "ds", "text", "label")
    assert rows.inputs == TEXTS and rows.labels == ["pos", "neg", "neg", "pos"]
    assert TextCSV(tmp_path / "ds", label_column="label").classes == ["neg", "pos"]
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DatasetError, match=r"DatasetDict \(splits \['train', 'test'\]\).*dd/train"):
        read_table(tmp_path / "dd", "text", "label")
    assert read_table(tmp_path / "dd" / "test", "text", "label").labels[0] == "pos"


def test_arrow_directory_several_files_and_label_outside_names(pa: Any, tmp_path: Path) -> None:
    features = {"label": {"names": ["a", "b"], "_type": "ClassLabel"}}
    root = write_arrow_dir(tmp_path / "ds", {"text": ["x", "y"], "label": [0, 1]}, features,
                           files=["data-00000-of-00002.arrow", "data-00001-of-00002.arrow"])
    rows = read_table(root, "text", "label")
    assert rows.inputs == ["x", "y", "x", "y"] and rows.labels == ["a", "b", "a", "b"]
    assert rows.places == [0, 1, 2, 3]
    bad = write_arrow_dir(tmp_path / "bad", {"text": ["x", "y", "z"], "label": [0, 2, -1]},
                          features)
    with pytest.raises(DatasetError, match=r"'label' outside its 2 class names on row\(s\) 1, 2"):
        read_table(bad, "text", "label")


@pytest.mark.parametrize("name", ["../outside.arrow", "/etc/passwd", "sub/data.arrow",
                                  "data.pkl"])
def test_arrow_directory_data_files_must_be_plain_names(pa: Any, tmp_path: Path, name: str) -> None:
    root = write_arrow_dir(tmp_path / "ds", {"text": ["x"], "label": ["a"]})
    (root / "state.json").write_text(json.dumps({"_data_files": [{"filename": name}]}))
    with pytest.raises(DatasetError, match="is not a plain \\*.arrow file name"):
        read_table(root, "text", "label")


def test_arrow_directory_refuses_links_out_missing_and_big_files(pa: Any, tmp_path: Path) -> None:
    outside = write_arrow_dir(tmp_path / "elsewhere", {"text": ["x"], "label": ["a"]})
    root = write_arrow_dir(tmp_path / "ds", {"text": ["x"], "label": ["a"]})
    data = root / "data-00000-of-00001.arrow"
    data.unlink()
    data.symlink_to(outside / "data-00000-of-00001.arrow")
    with pytest.raises(DatasetError, match="listed in state.json but not a file in"):
        read_table(root, "text", "label")
    data.unlink()
    with pytest.raises(DatasetError, match="listed in state.json but not a file in"):
        read_table(root, "text", "label")
    root = write_arrow_dir(tmp_path / "big", {"text": ["x" * 5000], "label": ["a"]})
    with pytest.raises(DatasetError, match="big: .* bytes, over the limit of 1000"):
        read_table(root, "text", "label", max_bytes=1000)
    (root / "state.json").write_text("{not json")
    with pytest.raises(DatasetError, match="state.json: not valid JSON"):
        read_table(root, "text", "label")


# -- image columns -----------------------------------------------------------------------

def image_files(folder: Path) -> None:
    (folder / "img").mkdir(parents=True)
    for i in range(2):
        (folder / "img" / f"{i}.png").write_bytes(png(40 * i))


def test_image_paths_relative_to_the_table_and_bytes_cells(pa: Any, tmp_path: Path) -> None:
    image_files(tmp_path)
    (tmp_path / "t.csv").write_text("image,label\nimg/0.png,a\n ./img/1.png ,b\n")
    rows = image_rows(tmp_path / "t.csv", "image", "label")
    assert rows.inputs == [(tmp_path / "img" / f"{i}.png").resolve() for i in range(2)]
    blobs = write_parquet(tmp_path / "b.parquet", {"image": [png(1), png(2)],
                                                   "label": ["a", "b"]})
    assert image_rows(blobs, "image", "label").inputs == [png(1), png(2)]
    hf = pa.array([{"bytes": png(3), "path": "/elsewhere/x.png"},
                   {"bytes": None, "path": "img/1.png"}])  # a Hugging Face Image column
    mixed = write_arrow_dir(tmp_path / "ds", {"image": hf, "label": ["a", "b"]})
    (mixed / "img").mkdir()
    (mixed / "img" / "1.png").write_bytes(png(9))
    got = image_rows(mixed, "image", "label").inputs  # paths from the directory itself
    assert got == [png(3), (mixed / "img" / "1.png").resolve()]


def test_image_paths_cannot_leave_the_folder_unless_allowed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(7))
    data = tmp_path / "data"
    image_files(data)
    (data / "img" / "link.png").symlink_to(secret)
    path = write_jsonl(data / "t.jsonl", [
        {"image": "img/0.png", "label": "a"},  # 1
        {"image": "../secret.png", "label": "a"},  # 2: out of the folder
        {"image": str(secret), "label": "a"},  # 3: absolute
        {"image": "img/link.png", "label": "b"},  # 4: a link leading out
        {"image": "img/missing.png", "label": "b"},  # 5
        {"image": "img", "label": "b"},  # 6: a directory
        {"image": 5, "label": "b"},  # 7
        {"image": "a\u0000b", "label": "b"},  # 8
        {"image": "../nowhere/x.png", "label": "b"},  # 9: out, and not there either
        {"image": "img/0.png", "label": None},  # 10: a reader's problem, told with the rest
        {"label": "b"},  # 11: no image: said once
    ])
    with pytest.raises(DatasetError) as e:
        image_rows(path, "image", "label")
    msg = str(e.value)
    assert "leading out of the table's folder on line(s) 2, 4, 9" in msg
    assert "an absolute image path on line(s) 3" in msg
    assert "not a file on line(s) 5, 6" in msg and "neither a path nor" in msg
    assert "the system cannot use on line(s) 8" in msg
    assert "missing 'label', or not a string or an integer on line(s) 10" in msg
    assert "missing or null 'image' on line(s) 11" in msg
    assert msg.count("line(s) 11") == 1 and ", 11" not in msg  # not again as a bad path
    assert f"relative paths are read from {data.resolve()}" in msg
    assert "absolute_image_paths" in msg and "--absolute-image-paths" in msg
    trusted = write_jsonl(data / "ok.jsonl", [{"image": "../secret.png", "label": "a"},
                                              {"image": str(secret), "label": "a"},
                                              {"image": "img/link.png", "label": "b"}])
    rows = image_rows(trusted, "image", "label", absolute_paths=True)
    assert rows.inputs == [secret.resolve()] * 3


def test_a_csv_of_images_reports_its_own_and_its_cells_problems_at_once(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    image_files(data)
    path = data / "t.csv"
    path.write_text("image,label\n"
                    "img/0.png,a\n"  # 2
                    "../out.png,a\n"  # 3: leads out of the folder
                    "img/1.png,\n"  # 4: no label
                    ",b\n", encoding="utf-8")  # 5: no image
    with pytest.raises(DatasetError) as e:
        image_rows(path, "image", "label")
    msg = str(e.value)
    assert "leading out of the table's folder on line(s) 3" in msg
    assert "missing or empty 'label' on line(s) 4" in msg
    assert "empty 'image' on line(s) 5" in msg and msg.count("line(s) 5") == 1
