"""Hypothesis properties of the model-directory reader: whatever a manifest or a weights
file holds, reading it either succeeds or raises ModelDirError (never another exception),
and every name it accepts stays inside the directory."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from metafit.deploy import ModelDirError  # noqa: E402
from metafit.deploy.manifest import ALLOWED, check_file_name  # noqa: E402
from metafit.deploy.modeldir import read_model_dir  # noqa: E402
from metafit.deploy.weights import load_tensors, save_tensors  # noqa: E402

SETTINGS = settings(max_examples=300, deadline=None, derandomize=True, database=None)

#: Path-like names: pieces an attacker would combine.
PIECES = ["model.json", "encoder", "..", ".", "", "/", "\\", "tokenizer.json", "a.model",
          "x\x00y", "weights.safetensors", "~", "..\\..", "encoder/config.json"]
names = st.one_of(st.text(max_size=40),
                  st.lists(st.sampled_from(PIECES), min_size=1, max_size=5).map("/".join))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(
        max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=12)


@SETTINGS
@given(rel=names, content=st.sampled_from(["adapted", "onnx"]), version=st.sampled_from(
    [1, 2]))
def test_an_accepted_file_name_stays_inside_the_directory(rel: str, content: str,
                                                          version: int) -> None:
    root = "/models/m"
    try:
        check_file_name(rel, content, version, "manifest")
    except ModelDirError:
        return
    resolved = os.path.normpath(os.path.join(root, rel))
    assert resolved.startswith(root + "/")
    assert rel in ALLOWED[(content, version)] or rel.startswith("encoder/")


def _entry(data: bytes) -> dict[str, Any]:
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@SETTINGS
@given(files=st.dictionaries(names, st.one_of(json_values, st.just("valid")), max_size=5),
       top=st.dictionaries(st.sampled_from(["format", "format_version", "content", "x"]),
                           json_values, max_size=3))
def test_any_manifest_reads_or_is_a_model_dir_error(files: dict[str, Any],
                                                    top: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "m"
        root.mkdir()
        (root / "model.json").write_bytes(b"{}")
        entries = {rel: (_entry(b"{}") if v == "valid" else v) for rel, v in files.items()}
        manifest = {"format": "metafit-model", "format_version": 2, "content": "adapted",
                    "files": entries, **top}
        (root / "manifest.json").write_text(json.dumps(manifest))
        try:
            _, read = read_model_dir(root, "adapted")
        except ModelDirError as e:
            assert str(e)  # a message, naming the problem
            return
        assert set(read) == set(entries) and all(v == b"{}" for v in read.values())


@SETTINGS
@given(manifest=json_values)
def test_a_manifest_of_any_json_is_a_model_dir_error(manifest: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(ModelDirError):
            read_model_dir(Path(tmp), "adapted")


@SETTINGS
@given(data=st.binary(max_size=200), cut=st.integers(0, 400))
def test_any_weights_bytes_load_or_are_a_model_dir_error(data: bytes, cut: int) -> None:
    good = save_tensors({"w": torch.arange(6.0).reshape(2, 3)})
    for blob in (data, good[:cut] + data, len(data).to_bytes(8, "little") + data):
        try:
            state = load_tensors(blob, "weights.safetensors")
        except ModelDirError:
            continue
        assert all(isinstance(k, str) for k in state)
