"""ImageTable and the table datasets of recipes: images listed in a CSV, JSON Lines or
Parquet file or a datasets directory (paths or encoded bytes) decode to the same tensor as
an image folder; decoding errors name the rows; text_table and image_table recipes load
their splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from metafit.config.recipe import load_recipe
from metafit.data.errors import DatasetError
from metafit.data.image_folder import ImageFolder
from metafit.data.image_table import ImageTable
from metafit.data.splits import load_split
from table_fixtures import png, write_arrow_dir, write_jsonl, write_parquet

CLASSES = {"cat": [10, 20], "dog": [30, 40, 50], "emu": [60, 70]}


def folder_and_rows(root: Path) -> list[tuple[str, str]]:
    """``root/<class>/<i>.png`` (one grey level each) and ``(relative path, label)`` rows."""
    rows = []
    for name, values in CLASSES.items():
        (root / name).mkdir(parents=True)
        for i, v in enumerate(values):
            (root / name / f"{i}.png").write_bytes(png(v, size=8, rgb=True))
            rows.append((f"{name}/{i}.png", name))
    return rows


def test_paths_in_csv_jsonl_and_bytes_in_parquet_match_the_folder(tmp_path: Path) -> None:
    rows = folder_and_rows(tmp_path)
    folder = ImageFolder(tmp_path, image_size=4, channels=3)
    (tmp_path / "t.csv").write_text("file,label\n" + "".join(f"{p},{c}\n" for p, c in rows))
    interleaved = sorted(rows, key=lambda r: (r[0].split("/")[1], r[0]))  # cat/0, dog/0, ...
    write_jsonl(tmp_path / "t.jsonl", [{"file": p, "label": c} for p, c in interleaved])
    tables = [ImageTable(tmp_path / "t.csv", "file", image_size=4, channels=3),
              ImageTable(tmp_path / "t.jsonl", "file", image_size=4, channels=3)]
    pytest.importorskip("pyarrow")
    blobs = [(tmp_path / p).read_bytes() for p, _ in rows]
    write_parquet(tmp_path / "t.parquet", {"img": blobs, "label": [c for _, c in rows]})
    tables.append(ImageTable(tmp_path / "t.parquet", "img", image_size=4, channels=3))
    for table in tables:
        assert table.classes == ["cat", "dog", "emu"] and table.counts.tolist() == [2, 3, 2]
        assert table.data.shape == (7, 3, 4, 4)
        assert torch.equal(table.data, folder.data)  # same decode, same grouping
    assert tables[0].sources[0] == (tmp_path / "cat" / "0.png").resolve()
    assert tables[2].sources == [None] * 7  # bytes have no path


def test_decoding_problems_name_the_rows_and_the_pixel_cap(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("L", (40, 40)).save(big)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    write_jsonl(tmp_path / "t.jsonl", [{"image": "big.png", "label": "a"},  # line 1
                                       {"image": "bad.png", "label": "a"},  # 2
                                       {"image": "bad.png", "label": "b"}])  # 3
    with pytest.raises(DatasetError) as e:
        ImageTable(tmp_path / "t.jsonl", max_pixels=1000, cache=False)
    msg = str(e.value)
    assert "an image over the pixel limit on line(s) 1" in msg
    assert "an image that cannot be decoded on line(s) 2, 3" in msg
    assert "(first, line 1: 40x40 pixels, over the limit of 1000)" in msg


def test_an_image_table_recipe_loads_its_class_splits(tmp_path: Path) -> None:
    rows = folder_and_rows(tmp_path / "data")
    for i in range(3):  # three more classes, so that each split gets one
        (tmp_path / "data" / f"c{i}.png").write_bytes(png(100 + i))
        rows += [(f"c{i}.png", f"class{i}")] * 2
    write_jsonl(tmp_path / "data" / "train.jsonl", [{"image": p, "y": c} for p, c in rows])
    recipe = load_recipe("sinusoid_maml", {  # any recipe, its data keys replaced
        "dataset": "image_table", "model": "conv4", "data_root": str(tmp_path / "data"),
        "label_column": "y", "image_size": 4, "class_split": [4, 1, 1]})
    splits = [load_split(recipe, s) for s in ("train", "val", "test")]
    assert [len(s.classes) for s in splits] == [4, 1, 1]
    assert sorted(c for s in splits for c in s.classes) == sorted({c for _, c in rows})
    assert splits[0].example_shape == (1, 4, 4)


def test_a_text_table_recipe_reads_jsonl(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from text_fixtures import sentences, shared_model_dir

    write_jsonl(tmp_path / "t.jsonl", [{"sentence": t, "y": c} for t, c in sentences(6, 3)])
    recipe = load_recipe("_banking77", {
        "dataset": "text_table", "data_root": str(tmp_path / "t.jsonl"),
        "text_model": str(shared_model_dir()), "max_length": 16, "text_column": "sentence",
        "label_column": "y", "class_split": [4, 1, 1]})
    train = load_split(recipe, "train")
    assert len(train.classes) == 4 and train.counts.tolist() == [3] * 4
    assert train.gather(torch.tensor([0, 1])).shape == (2, 16)  # token ids


def test_a_datasets_directory_of_hugging_face_images(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    images = pa.array([{"bytes": png(v), "path": None} for v in (5, 6, 7, 8)])
    root = write_arrow_dir(tmp_path / "ds", {"image": images, "label": [0, 1, 0, 1]},
                           {"label": {"names": ["no", "yes"], "_type": "ClassLabel"}})
    table = ImageTable(root, image_size=6)
    assert table.classes == ["no", "yes"] and table.counts.tolist() == [2, 2]
    assert table.data[:, 0, 0, 0].tolist() == [5, 7, 6, 8]  # grouped by class
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train"]}))
    assert ImageTable(root, image_size=6).num_classes == 2  # state.json wins


def test_absolute_image_paths_is_a_recipe_key(tmp_path: Path) -> None:
    folder_and_rows(tmp_path / "imgs")
    rows = [{"image": str(tmp_path / "imgs" / c / f"{i}.png"), "y": c}
            for c, values in CLASSES.items() for i in range(len(values))]
    (tmp_path / "table").mkdir()
    write_jsonl(tmp_path / "table" / "t.jsonl", rows)
    values = {"dataset": "image_table", "model": "conv4", "image_size": 4, "label_column": "y",
              "data_root": str(tmp_path / "table" / "t.jsonl"), "split_classes": False}
    with pytest.raises(DatasetError, match=r"an absolute image path on line\(s\) 1, 2, 3"):
        load_split(load_recipe("sinusoid_maml", values), "train")
    trusted = load_recipe("sinusoid_maml", {**values, "absolute_image_paths": True})
    assert load_split(trusted, "train").counts.tolist() == [2, 3, 2]
