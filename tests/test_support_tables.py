"""Support sets for ``metafit adapt`` from tables: texts and images (paths or encoded
bytes) from JSON Lines, Parquet and CSV files, image paths kept inside the table's folder
unless ``--absolute-image-paths``, and encoded images decoded under the pixel cap."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metafit.cli.main import main
from metafit.deploy.errors import SupportError
from metafit.deploy.preprocess import ImagePreprocessor, load_support
from table_fixtures import write_jsonl, write_parquet


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_text_support_from_jsonl_and_parquet(tmp_path: Path) -> None:
    records = [{"text": "card alpha0", "category": "x"}, {"text": "beta1 help", "category": "y"},
               {"text": "alpha0 please", "category": "x"}]
    path = write_jsonl(tmp_path / "s.jsonl", records)
    assert load_support(path, "text") == (["card alpha0", "alpha0 please", "beta1 help"],
                                          ["x", "x", "y"])  # grouped by class, as from CSV
    pytest.importorskip("pyarrow")
    table = write_parquet(tmp_path / "s.parquet", {"words": ["a b", "c d"], "y": ["p", "q"]})
    assert load_support(table, "text", "words", "y") == (["a b", "c d"], ["p", "q"])
    with pytest.raises(SupportError, match=r"s.parquet: column\(s\) \['category'\] not found"):
        load_support(table, "text", "words")
    with pytest.raises(SupportError, match="is a directory; a text support set is a table"):
        load_support(tmp_path, "text")
    with pytest.raises(SupportError, match="nope.jsonl: no such file or folder"):
        load_support(tmp_path / "nope.jsonl", "text")


def test_image_support_from_paths_and_bytes(tmp_path: Path) -> None:
    pixels = [np.full((8, 8), v, np.uint8) for v in (10, 200)]
    (tmp_path / "imgs").mkdir()
    for i, p in enumerate(pixels):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png(p))
    csv = tmp_path / "s.csv"
    csv.write_text("image,category\nimgs/0.png,dark\nimgs/1.png,light\n")
    inputs, labels = load_support(csv, "image")
    assert inputs == [(tmp_path / "imgs" / f"{i}.png").resolve() for i in range(2)]
    assert labels == ["dark", "light"]
    pytest.importorskip("pyarrow")
    blobs = write_parquet(tmp_path / "b.parquet", {"image": [png(p) for p in pixels],
                                                   "category": ["dark", "light"]})
    inputs, labels = load_support(blobs, "image")
    x = ImagePreprocessor(8, 1, invert=False)(inputs, SupportError)  # [2, 1, 8, 8]
    assert x.shape == (2, 1, 8, 8) and x[0].max() < 0.1 < 0.7 < x[1].min()
    bomb = write_parquet(tmp_path / "bomb.parquet", {
        "image": [png(np.zeros((64, 64), np.uint8))], "category": ["a"]})
    inputs, _ = load_support(bomb, "image")
    with pytest.raises(SupportError, match=r"input 0: 64x64 pixels, over the limit of 100"):
        ImagePreprocessor(8, 1, invert=False, max_pixels=100)(inputs, SupportError)


def test_adapt_refuses_paths_out_of_the_folder_unless_allowed(tmp_path: Path, capsys) -> None:
    from deploy_fixtures import image_run, pattern

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    rows = []
    for c in range(2):
        for i in range(2):
            (outside / f"{c}_{i}.png").write_bytes(png(pattern(c, i)))
            rows.append({"image": f"../elsewhere/{c}_{i}.png", "category": f"label_{c}"})
    (tmp_path / "support").mkdir()
    table = write_jsonl(tmp_path / "support" / "s.jsonl", rows)
    args = ["adapt", str(image_run()), "--support", str(table)]
    assert main([*args, "--out", str(tmp_path / "m1")]) == 2
    err = capsys.readouterr().err
    assert "leading out of the table's folder on line(s) 1, 2, 3, 4" in err
    assert not (tmp_path / "m1").exists()
    assert main([*args, "--out", str(tmp_path / "m2"), "--absolute-image-paths",
                 "--json"]) == 0
    assert '"support_size":4' in capsys.readouterr().out.replace(" ", "")
