"""Data and recipes from strangers (review of 2026-12-06): decompression bombs in Omniglot
zips and gzipped IDX files, FIFOs and links in an extracted Omniglot folder, Parquet and
Arrow columns that expand past the size limit once read, malformed Hugging Face metadata,
recipe names that are paths, infinite rates, oversized images, IDX images of another
size than the recipe's, empty splits in `metafit data`, an MLflow store that refuses.
Each is a one-line error naming the file or key, before the work starts."""

from __future__ import annotations

import gzip
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

import metafit.data.idx as idx_module
import metafit.data.omniglot_files as omniglot_files
from metafit.cli.main import main
from metafit.config.recipe import RecipeError, load_recipe
from metafit.config.schema import make_recipe
from metafit.data.errors import DatasetError
from metafit.data.idx import read_idx
from metafit.data.omniglot_files import _list_folder, decode_sources
from table_fixtures import png, write_parquet


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METAFIT_CACHE", str(tmp_path / "cache"))


def test_an_omniglot_zip_member_is_refused_before_it_is_inflated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(omniglot_files, "MAX_FILE_BYTES", 10_000)
    path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("images_background/Alpha/character01/0101_01.png", png(3))
        z.writestr("images_background/Alpha/character01/0101_02.png", b"\0" * 50_000)
    assert path.stat().st_size < 10_000
    with pytest.raises(DatasetError, match=r"0101_02.png in .*: 50000 bytes uncompressed, "
                                           r"over the limit of 10000"):
        decode_sources([("background", path)], 8)


def test_an_omniglot_folder_lists_regular_files_only(tmp_path: Path) -> None:
    folder = tmp_path / "images_background" / "Alpha" / "character01"
    folder.mkdir(parents=True)
    (folder / "0101_01.png").write_bytes(png(3))
    os.mkfifo(folder / "0101_02.png")  # reading it would block forever
    outside = tmp_path / "secret.png"
    outside.write_bytes(png(9))
    (folder / "0101_03.png").symlink_to(outside)
    listed = _list_folder(tmp_path / "images_background")
    assert [Path(p).name for p in listed.values()] == ["0101_01.png"]
    decoded = decode_sources([("background", tmp_path / "images_background")], 6)
    assert decoded["data"].shape == (1, 1, 6, 6)


def _idx_header(shape: tuple[int, ...]) -> bytes:
    return struct.pack(">BBBB", 0, 0, 0x08, len(shape)) + struct.pack(f">{len(shape)}I", *shape)


def test_a_gzipped_idx_file_is_read_no_further_than_its_header_allows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    bomb.write_bytes(gzip.compress(_idx_header((1, 28, 28)) + b"\0" * 20_000_000))
    assert bomb.stat().st_size < 100_000
    with pytest.raises(DatasetError, match=r"longer than its header says: header \[1, 28, 28\] "
                                           r"needs 800 bytes"):
        read_idx(bomb, 3)
    monkeypatch.setattr(idx_module, "MAX_IDX_BYTES", 1000)
    big = tmp_path / "big-images-idx3-ubyte.gz"
    big.write_bytes(gzip.compress(_idx_header((2, 28, 28)) + b"\0" * 1568))
    with pytest.raises(DatasetError, match=r"declares 1568 bytes, over the limit of 1000"):
        read_idx(big, 3)
    short = tmp_path / "short-images-idx3-ubyte"
    short.write_bytes(_idx_header((1, 28, 28)) + b"\0" * 10)
    with pytest.raises(DatasetError, match=r"truncated: 26 bytes, header \[1, 28, 28\] "
                                           r"needs 800"):
        read_idx(short, 3)


@pytest.mark.parametrize("kind", ["parquet", "arrow_dir"])
def test_a_dictionary_encoded_column_cannot_expand_past_the_limit(tmp_path: Path,
                                                                 kind: str) -> None:
    import pyarrow as pa

    from metafit.data.arrow_dir_rows import read_arrow_dir
    from metafit.data.parquet_rows import read_parquet
    from table_fixtures import write_arrow_dir

    # 4 MB as Python strings; ~10 KB in a Parquet file, which dictionary-encodes it.
    big = pa.array(["x" * 10_000] * 400)
    columns = {"text": big if kind == "parquet" else big.dictionary_encode(),
               "label": ["a", "b"] * 200}
    if kind == "parquet":
        path = write_parquet(tmp_path / "t.parquet", columns)
        assert path.stat().st_size < 200_000
        read = read_parquet
    else:
        path = write_arrow_dir(tmp_path / "d", columns)
        read = read_arrow_dir
    with pytest.raises(DatasetError, match="column 'text' holds more than the limit"):
        read(path, "text", "label", max_bytes=1_000_000)
    rows = read(path, "text", "label", max_bytes=10_000_000)
    assert len(rows.inputs) == 400 and rows.inputs[0] == "x" * 10_000


def test_malformed_hugging_face_metadata_is_ignored(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from metafit.data.parquet_rows import read_parquet

    for info in (7, {"info": 7}, {"info": {"features": 7}}, [1]):
        table = pa.table({"text": ["a", "b"], "label": ["x", "y"]}).replace_schema_metadata(
            {"huggingface": json.dumps(info)})
        pq.write_table(table, tmp_path / "t.parquet")
        assert read_parquet(tmp_path / "t.parquet", "text", "label").labels == ["x", "y"]


@pytest.mark.parametrize("values, key", [
    ({"name": "../../escaped"}, "name"), ({"name": "/tmp/x"}, "name"),
    ({"name": "a/b"}, "name"), ({"inner_lr": float("inf")}, "inner_lr"),
    ({"outer_lr": float("nan")}, "outer_lr"), ({"image_size": 200_000}, "image_size"),
])
def test_recipe_values_that_escape_or_overflow_are_refused(values: dict, key: str) -> None:
    with pytest.raises(RecipeError, match=f"{key}: "):
        make_recipe(values)


def test_a_recipe_file_named_with_spaces_gets_a_folder_name(tmp_path: Path) -> None:
    path = tmp_path / "my recipe (v2).yaml"
    path.write_text("iterations: 1\n")
    assert load_recipe(str(path)).name == "my_recipe__v2_"


def test_idx_images_of_another_size_than_the_recipe_are_refused(tmp_path: Path,
                                                               capsys) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 5, 5), dtype=np.uint8).tobytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(_idx_header((4, 5, 5)) + images)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_header((4,)) + bytes([0, 1, 0, 1]))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: idx\ndata_root: {tmp_path}\nways: 2\nshots: 1\nqueries: 1\n")
    assert main(["data", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "holds 5x5 greyscale images; the recipe asks for image_size 28" in err
    assert "set image_size: 5, channels: 1" in err


def test_metafit_data_warns_of_empty_splits(tmp_path: Path, capsys) -> None:
    from test_trainer import image_folder

    data = image_folder(tmp_path / "data")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"dataset: image_folder\ndata_root: {data}\nimage_size: 8\nways: 2\n"
                      "shots: 1\nqueries: 1\nsplit_scheme: all_classes\nholdout_fraction: 0.01\n")
    assert main(["data", str(recipe)]) == 0
    out = capsys.readouterr()
    assert "val: 0 classes, 0 examples" in out.out
    assert "warning: val: 0 class(es), fewer than the 2 ways" in out.out


def test_an_mlflow_store_that_refuses_is_a_one_line_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.exceptions import MlflowException

    import metafit.training.mlflow_logger as logger

    def refuse(uri: str | None, run: Path) -> None:
        raise MlflowException("The filesystem tracking backend is in maintenance mode. More")

    monkeypatch.setattr(logger, "tracking_client", refuse)
    from metafit.training.trainer import Trainer
    from test_trainer import classification_recipe, image_folder

    recipe = classification_recipe(image_folder(tmp_path / "data"), "protonet", iterations=1,
                                   mlflow=True, mlflow_uri="file:///nowhere")
    with pytest.raises(ValueError, match=r"MLflow tracking store file:///nowhere cannot be "
                                         r"used \(The filesystem tracking backend is in "
                                         r"maintenance mode\); set mlflow_uri"):
        Trainer(recipe, tmp_path / "run", progress=False).fit()


def test_a_recipe_file_cannot_send_the_run_to_a_server(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("mlflow: true\nmlflow_uri: https://tracking.example.com\n")
    with pytest.raises(RecipeError, match=r"r.yaml: mlflow_uri 'https://tracking.example.com' "
                                          r"names a server; a recipe file may name a local"):
        load_recipe(str(recipe))
    given = load_recipe(str(recipe), ["mlflow_uri=https://mine.example.com"])  # your own
    assert given.mlflow_uri == "https://mine.example.com"
    recipe.write_text(f"mlflow: true\nmlflow_uri: sqlite:///{tmp_path}/mlflow.db\n")
    assert load_recipe(str(recipe)).mlflow_uri.startswith("sqlite:///")
