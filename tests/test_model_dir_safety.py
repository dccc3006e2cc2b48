"""Model directories from strangers: manifests that point outside the directory or are
malformed, symbolic links, pickled payloads; weights stored as safetensors and read back
exactly, quantized ones included; format 1 directories still read."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from deploy_fixtures import image_run, pattern, support_folder
from metafit.cli.main import main
from metafit.deploy import AdaptedModel, Adapter, ModelDirError, load_support
from metafit.deploy.compress import quantize
from metafit.deploy.modeldir import write_model_dir
from metafit.deploy.weights import load_tensors, save_tensors
from test_run_safety import Exploit


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MAML model directory (a linear head: quantization changes it)."""
    root = tmp_path_factory.mktemp("received")
    inputs, labels = load_support(support_folder(root / "support", classes=2), "image")
    model = Adapter.from_run(image_run("maml")).adapt(inputs, labels)
    return model.save(root / "pristine")


def _copy(model_dir: Path, where: Path) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(model_dir, where / "model"))


def _edit_manifest(path: Path, edit: Any) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))


def _list(path: Path, rel: str, data: bytes) -> None:
    """Add ``rel`` to the manifest with a correct size and checksum (an attacker can)."""
    _edit_manifest(path, lambda m: m["files"].__setitem__(
        rel, {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}))


@pytest.mark.parametrize("verb", ["compress", "export"])
def test_a_manifest_entry_cannot_write_outside_the_output(model_dir: Path, tmp_path: Path,
                                                          verb: str, capsys) -> None:
    received = _copy(model_dir, tmp_path / "downloads")
    payload = b"ssh-ed25519 AAAA attacker\n"
    (received / "encoder").mkdir()
    (tmp_path / "downloads" / "authorized_keys").write_bytes(payload)  # shipped beside it
    _list(received, "encoder/../../authorized_keys", payload)
    out = tmp_path / "models" / "out"
    out.parent.mkdir()
    args = (["compress", str(received), "--quantize", "int8", "--out", str(out)]
            if verb == "compress" else ["export", str(received), "--out", str(out)])
    assert main(args) == 2
    assert not (tmp_path / "models" / "authorized_keys").exists()
    assert not out.exists()
    assert "'encoder/../../authorized_keys' is not a relative, normalised path" in \
        capsys.readouterr().err


BAD_MANIFESTS = [  # (edit, message)
    (lambda m: m.__setitem__("files", list(m["files"])), "'files' must be an object"),
    (lambda m: m["files"]["model.json"].pop("sha256"), "'model.json' has no valid 'sha256'"),
    (lambda m: m["files"]["model.json"].__setitem__("bytes", "12"), "no valid 'bytes'"),
    (lambda m: m["files"].__setitem__("/etc/passwd", m["files"]["model.json"]),
     "'/etc/passwd' is not a relative, normalised path"),
    (lambda m: m["files"].__setitem__("run.py", m["files"]["model.json"]),
     "'run.py' is not a file a 'adapted' model directory holds"),
    (lambda m: m["files"].__setitem__("encoder\\..\\x.json", m["files"]["model.json"]),
     "is not a relative, normalised path"),
    (lambda m: m.__setitem__("format_version", True), "format version True is not supported"),
    (lambda m: m.__setitem__("content", ["adapted"]), "unknown content"),
]


@pytest.mark.parametrize("edit,message", BAD_MANIFESTS)
def test_malformed_manifests_are_one_line_errors(model_dir: Path, tmp_path: Path, edit: Any,
                                                 message: str, capsys) -> None:
    received = _copy(model_dir, tmp_path)
    _edit_manifest(received, edit)
    with pytest.raises(ModelDirError, match=message.replace("(", r"\(").replace(")", r"\)")):
        AdaptedModel.load(received)
    assert main(["predict", str(received), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("metafit: error: ") and err.count("\n") == 1


def test_a_symbolic_link_inside_a_model_directory_is_refused(model_dir: Path,
                                                             tmp_path: Path) -> None:
    received = _copy(model_dir, tmp_path / "in")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    (received / "encoder").symlink_to(outside)
    _list(received, "encoder/config.json", b"{}")
    with pytest.raises(ModelDirError, match="reached through the symbolic link"):
        AdaptedModel.load(received)


def test_writing_refuses_a_file_name_outside_the_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="not a relative, normalised path"):
        write_model_dir(tmp_path / "m", {"model.json": b"{}", "encoder/../../x.json": b"1"},
                        "adapted")
    assert not (tmp_path / "x.json").exists() and list(tmp_path.iterdir()) == []


def test_weights_are_safetensors_and_nothing_is_pickled(model_dir: Path) -> None:
    from safetensors.torch import load_file

    names = sorted(p.name for p in model_dir.iterdir())
    assert names == ["manifest.json", "model.json", "recipe.yaml", "support.safetensors",
                     "weights.safetensors"]
    weights = load_file(model_dir / "weights.safetensors")  # any safetensors reader
    assert "head.weight" in weights and weights["head.weight"].dtype == torch.float32
    support = load_file(model_dir / "support.safetensors")
    assert support["x"].shape[0] == support["y"].shape[0] == 4
    for path in model_dir.iterdir():  # no zip (torch.save) and no pickle stream
        data = path.read_bytes()
        assert not data.startswith(b"PK\x03\x04")
        assert not (data[:1] == b"\x80" and data[1] in range(2, 6) and data.endswith(b"."))


def test_quantized_weights_round_trip_exactly(model_dir: Path, tmp_path: Path) -> None:
    model = AdaptedModel.load(model_dir)
    small = quantize(model)
    back = AdaptedModel.load(small.save(tmp_path / "int8"))
    x = torch.from_numpy(pattern(1, 7)).float()[None, None] / 255
    assert torch.equal(back.logits(x), small.logits(x))
    state = load_tensors((tmp_path / "int8" / "weights.safetensors").read_bytes(), "w")
    packed = state["head._packed_params._packed_params"]
    assert packed[0].is_quantized and packed[0].dtype == torch.qint8


def test_a_damaged_weights_file_or_layout_is_a_model_dir_error() -> None:
    from safetensors.torch import save

    data = save_tensors({"a": torch.zeros(2)})
    with pytest.raises(ModelDirError, match="not a safetensors file"):
        load_tensors(data[:6], "w.safetensors")
    forged = save({"a": torch.zeros(2)}, metadata={"metafit_layout": json.dumps(
        {"b": {"type": "quantized", "dtype": "qint8", "scheme": "per_tensor_affine",
               "scale": 0.1, "zero_point": 0}})})
    with pytest.raises(ModelDirError, match="names tensor 'b', which the file does not hold"):
        load_tensors(forged, "w.safetensors")
    forged = save({"a": torch.zeros(2)}, metadata={"metafit_layout": json.dumps(
        {"a": {"type": "pickle"}})})
    with pytest.raises(ModelDirError, match="unknown type 'pickle'"):
        load_tensors(forged, "w.safetensors")
    forged = save({"a": torch.zeros(2), "a::9": torch.zeros(1)})
    with pytest.raises(ModelDirError, match="tensor 'a::9' belongs to no layout entry"):
        load_tensors(forged, "w.safetensors")


def _as_format_1(model_dir: Path, out: Path, weights: Any = None) -> Path:
    """``model_dir`` rewritten as metafit wrote it before safetensors (format 1)."""
    out.mkdir(parents=True)
    files = {n: (model_dir / n).read_bytes() for n in ("model.json", "recipe.yaml")}
    for name in ("weights", "support"):
        state = load_tensors((model_dir / f"{name}.safetensors").read_bytes(), name)
        buf = io.BytesIO()
        torch.save(dict(state) if weights is None or name == "support" else weights, buf)
        files[f"{name}.pt"] = buf.getvalue()
    for name, data in files.items():
        (out / name).write_bytes(data)
    manifest = {"format": "metafit-model", "format_version": 1, "content": "adapted",
                "metafit_version": "0.1.0", "files": {
                    n: {"bytes": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                    for n, d in files.items()}}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_format_1_directories_still_load(model_dir: Path, tmp_path: Path) -> None:
    old = AdaptedModel.load(_as_format_1(model_dir, tmp_path / "old"))
    new = AdaptedModel.load(model_dir)
    x = torch.from_numpy(pattern(2, 3)).float()[None, None] / 255
    assert torch.equal(old.logits(x), new.logits(x))


@pytest.mark.parametrize("verb", ["predict", "compress", "export"])
def test_a_pickled_payload_in_format_1_weights_never_runs(model_dir: Path, tmp_path: Path,
                                                          verb: str, capsys) -> None:
    marker = tmp_path / "pwned"
    state = dict(load_tensors((model_dir / "weights.safetensors").read_bytes(), "w"))
    state["evil"] = Exploit(marker)
    old = _as_format_1(model_dir, tmp_path / "old", weights=state)
    args = {"predict": ["predict", str(old), str(tmp_path / "x.png")],
            "compress": ["compress", str(old), "--prune", "0.5", "--out",
                         str(tmp_path / "c")],
            "export": ["export", str(old), "--out", str(tmp_path / "e")]}[verb]
    assert main(args) == 2
    assert not marker.exists()
    assert "weights.pt holds objects other than tensors and plain values, which metafit " \
        "never loads" in capsys.readouterr().err


def _rewrite(path: Path, name: str, edit: Any) -> None:
    """Edit file ``name`` of a model directory and list its new checksum."""
    data = edit((path / name).read_bytes())
    (path / name).write_bytes(data)
    _list(path, name, data)


def test_a_forged_architecture_is_refused_before_it_is_allocated(model_dir: Path,
                                                                 tmp_path: Path) -> None:
    received = _copy(model_dir, tmp_path)
    # 10^5 filters per convolution: ~3.6e11 bytes if it were built for real.
    _rewrite(received, "recipe.yaml", lambda b: b.replace(b"hidden: 4", b"hidden: 100000"))
    with pytest.raises(ModelDirError, match=r"needs [\d,]+ values but the weights hold "):
        AdaptedModel.load(received)


def test_preprocessing_out_of_bounds_is_refused(model_dir: Path, tmp_path: Path) -> None:
    received = _copy(model_dir, tmp_path)
    _rewrite(received, "model.json", lambda b: b.replace(b'"image_size": 8',
                                                        b'"image_size": 100000'))
    with pytest.raises(ModelDirError, match=r"image_size must be 1\.\.4096"):
        AdaptedModel.load(received)


def test_the_server_refuses_a_manifest_pointing_outside(model_dir: Path,
                                                        tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    from metafit.server import ServerSettings, create_app

    received = _copy(model_dir, tmp_path)
    (received / "encoder").mkdir()
    (tmp_path / "secret.json").write_text("{}")
    _list(received, "encoder/../../secret.json", b"{}")
    with pytest.raises(ModelDirError, match="not a relative, normalised path"):
        create_app(ServerSettings(target=received))
    assert os.path.exists(tmp_path / "secret.json")


def test_compressed_format_1_weights_are_refused_before_they_are_inflated(
        model_dir: Path, tmp_path: Path) -> None:
    from test_run_safety import deflated

    state = dict(load_tensors((model_dir / "weights.safetensors").read_bytes(), "w"))
    state["pad"] = torch.zeros(2**24)  # 64 MB of zeros: ~64 KB compressed
    old = _as_format_1(model_dir, tmp_path / "old", weights=state)
    deflated(old / "weights.pt")
    _list(old, "weights.pt", (old / "weights.pt").read_bytes())
    assert (old / "weights.pt").stat().st_size < 2**20
    with pytest.raises(ModelDirError, match=r"weights.pt: record '.*' is compressed"):
        AdaptedModel.load(old)


def test_a_deeply_nested_manifest_or_model_json_is_a_one_line_error(
        model_dir: Path, tmp_path: Path) -> None:
    received = _copy(model_dir, tmp_path / "a")
    (received / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelDirError, match="manifest.json is nested too deeply"):
        AdaptedModel.load(received)
    received = _copy(model_dir, tmp_path / "b")
    _rewrite(received, "model.json", lambda b: b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ModelDirError, match="model.json is nested too deeply"):
        AdaptedModel.load(received)


def test_a_version_folder_linked_elsewhere_is_refused(model_dir: Path, tmp_path: Path,
                                                      capsys) -> None:
    home, other = _copy(model_dir, tmp_path / "home"), _copy(model_dir, tmp_path / "other")
    (home / "versions").mkdir()
    os.symlink(other, home / "versions" / "v0002")
    (home / "current").write_text("2\n")
    with pytest.raises(ModelDirError, match="v0002 is a symbolic link"):
        AdaptedModel.load(home)
    assert main(["predict", str(home), str(tmp_path / "x.png")]) == 2
    assert "v0002 is a symbolic link" in capsys.readouterr().err


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.__setitem__("y", s["y"] + 7), r"y must be label numbers 0\.\.1 .* 7\.\.8"),
    (lambda s: s.__setitem__("y", s["y"] - 1), r"y must be label numbers 0\.\.1 .* -1\.\.0"),
    (lambda s: s.__setitem__("y", s["y"].float()), "y must hold integer labels"),
    (lambda s: s.__setitem__("x", s["x"][:, :, :3, :3].contiguous()),
     r"x must be \[S, 1, 8, 8\] floats .* got \(\d+, 1, 3, 3\)"),
    (lambda s: s.__setitem__("y", s["y"][:1].contiguous()), "x .* and y .* with S > 0"),
])
def test_a_forged_support_set_is_refused_on_loading(model_dir: Path, tmp_path: Path,
                                                    edit: Any, message: str) -> None:
    received = _copy(model_dir, tmp_path)

    def forge(data: bytes) -> bytes:
        support = dict(load_tensors(data, "support"))
        edit(support)
        return save_tensors(support)

    _rewrite(received, "support.safetensors", forge)
    with pytest.raises(ModelDirError, match=message):
        AdaptedModel.load(received)


# -- text models: the encoder's files (review of 2026-12-06) --------------------------------
@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deploy_fixtures import text_run
    from text_fixtures import sentences, write_csv

    root = tmp_path_factory.mktemp("text_model")
    support = write_csv(root / "support.csv", sentences(3, 2, seed=1))
    assert main(["adapt", str(text_run()), "--support", str(support), "--out",
                 str(root / "model")]) == 0
    return root / "model"


def _json_edit(key_values: dict[str, Any]) -> Any:
    def edit(data: bytes) -> bytes:
        return json.dumps({**json.loads(data), **key_values}).encode()
    return edit


@pytest.mark.parametrize("file, changes, message", [
    ("encoder/config.json", {"num_hidden_layers": 20000},  # 36 s and 1.7 GB to build
     r"num_hidden_layers must be an integer 1\.\.64"),
    ("encoder/config.json", {"num_attention_heads": 0},  # a ZeroDivisionError
     r"num_attention_heads must be an integer 1\.\.256"),
    ("encoder/config.json", {"max_position_embeddings": 10**12},
     r"max_position_embeddings must be an integer 1\.\.65536"),
    ("encoder/config.json", {"hidden_size": "x"},  # transformers' own validation error
     r"encoder/ \(config.json, tokenizer files\): \w+Error"),
    ("encoder/config.json", {"dtype": "bogus"}, r"encoder/ .*AttributeError"),
    ("encoder/config.json", {"max_position_embeddings": 8},
     r"preprocessing.max_length \d+ is past the encoder's 8 positions"),
    ("encoder/config.json", {"vocab_size": 5},
     r"the tokenizer's ids reach \d+ but the encoder's token table has 5 rows"),
])
def test_a_forged_text_encoder_is_refused_before_it_is_built(
        text_model: Path, tmp_path: Path, file: str, changes: dict, message: str,
        capsys) -> None:
    received = _copy(text_model, tmp_path)
    _rewrite(received, file, _json_edit(changes))
    with pytest.raises(ModelDirError, match=message):
        AdaptedModel.load(received)
    (tmp_path / "in.txt").write_text("hello there\n")
    assert main(["predict", str(received), "--from-file", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_a_tokenizer_that_fails_on_text_is_refused_on_loading(text_model: Path,
                                                              tmp_path: Path) -> None:
    received = _copy(text_model, tmp_path)

    def no_unknown_token(data: bytes) -> bytes:  # WordPiece then fails on unknown words
        spec = json.loads(data)
        assert spec["model"]["type"] == "WordPiece"
        spec["model"]["vocab"].pop(spec["model"]["unk_token"])
        return json.dumps(spec).encode()

    _rewrite(received, "encoder/tokenizer.json", no_unknown_token)
    with pytest.raises(ModelDirError, match="the tokenizer fails on plain text"):
        AdaptedModel.load(received)


def test_texts_and_input_files_are_bounded(text_model: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import metafit.cli.adapt as adapt_cli
    from metafit.deploy.errors import InputError
    from metafit.deploy.preprocess import MAX_TEXT_CHARACTERS

    model = AdaptedModel.load(text_model)
    with pytest.raises(InputError, match=r"input 1: 100,001 characters, over the limit"):
        model.predict(["fine", "x" * (MAX_TEXT_CHARACTERS + 1)])
    monkeypatch.setattr(adapt_cli, "MAX_FROM_FILE_BYTES", 100)
    (tmp_path / "in.txt").write_text("a line\n" * 20)
    assert main(["predict", str(text_model), "--from-file", str(tmp_path / "in.txt")]) == 2
    assert "over the limit of 100 (--from-file)" in capsys.readouterr().err


def _age(path: Path, seconds: float) -> None:
    """Set the modification time of ``path`` and everything under it ``seconds`` back."""
    when = os.stat(path).st_mtime - seconds
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.utime(os.path.join(root, name), (when, when))
    os.utime(path, (when, when))


def test_a_killed_writers_staging_is_swept_and_a_live_ones_kept(tmp_path: Path) -> None:
    # a killed adapt/compress left .NAME.tmp-XXXXXXXX (90 MB and more for a text model)
    out = tmp_path / "m"
    dead = tmp_path / ".m.tmp-0badf00d"
    (dead / "weights").mkdir(parents=True)
    (dead / "weights" / "w.bin").write_bytes(b"x" * 100)
    _age(dead, 3600)
    live = tmp_path / ".m.tmp-1badf00d"  # another process writing the same directory now
    live.mkdir()
    (live / "model.json").write_text("{}")
    other = tmp_path / ".mm.tmp-2badf00d"  # a writer of another directory
    other.mkdir()
    _age(other, 3600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _age(elsewhere, 3600)
    (tmp_path / ".m.tmp-3badf00d").symlink_to(elsewhere)  # a link is never followed
    write_model_dir(out, {"model.json": b"{}"}, "adapted")
    assert not dead.exists() and live.is_dir() and other.is_dir() and elsewhere.is_dir()
    assert (tmp_path / ".m.tmp-3badf00d").is_symlink()
    assert (out / "model.json").read_bytes() == b"{}"


def test_an_ensembles_killed_staging_is_swept(tmp_path: Path) -> None:
    from metafit.io import remove_stale_dirs

    dead = tmp_path / ".ens.c77326a8.tmp"
    (dead / "checkpoints").mkdir(parents=True)
    fresh = tmp_path / ".ens.d77326a8.tmp"
    fresh.mkdir()
    _age(dead, 120)
    # a recent change anywhere inside keeps a directory: a writer still at work
    (dead / "checkpoints" / "best.pt").write_bytes(b"now")
    assert remove_stale_dirs(tmp_path, r"\.ens\.[0-9a-f]{8}\.tmp") == []
    _age(dead, 120)
    assert remove_stale_dirs(tmp_path, r"\.ens\.[0-9a-f]{8}\.tmp") == [dead]
    assert fresh.is_dir()
