"""model image_encoder: tiny random Hugging Face image encoders of each family (ViT, DINOv2,
CLIP vision, ConvNeXt, ResNet) built here and saved with an image processor config; their
features, adapt scopes, preprocessing against the Hugging Face processor, meta-training
from a recipe, adapted model directories, ONNX export and serving."""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")
pytest.importorskip("peft")

import transformers  # noqa: E402

from metafit.config.schema import make_recipe  # noqa: E402
from metafit.deploy import AdaptedModel, Adapter, load_support  # noqa: E402
from metafit.evaluation.feature_cache import cached_body, uncacheable_reason  # noqa: E402
from metafit.models.adapt import layer_stack  # noqa: E402
from metafit.models.image_encoder import PROCESSOR_FILE, image_encoder_model  # noqa: E402
from metafit.training.trainer import Trainer  # noqa: E402
from test_trainer import image_folder  # noqa: E402
from text_fixtures import session_dir  # noqa: E402

FAMILIES = ("vit", "dinov2", "clip", "convnext", "resnet")
SIDE = 32  # the encoders' native input side
transformers.logging.set_verbosity_error()


def _family(name: str) -> tuple[Any, Any]:
    """A tiny random config of ``name`` and the image processor saved beside it."""
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        ConvNextConfig,
        ConvNextImageProcessor,
        Dinov2Config,
        ResNetConfig,
        ViTConfig,
        ViTImageProcessor,
    )

    attention = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     image_size=SIDE, patch_size=8)
    square = {"height": SIDE, "width": SIDE}
    if name == "vit":
        return ViTConfig(intermediate_size=32, **attention), ViTImageProcessor(size=square)
    if name == "dinov2":  # DINOv2's processor: resize the short side, then a centre crop
        return Dinov2Config(mlp_ratio=2, **attention), BitImageProcessor(
            size={"shortest_edge": SIDE + 4}, crop_size=square,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    if name == "clip":
        return CLIPVisionConfig(intermediate_size=32, **attention), CLIPImageProcessor(
            size={"shortest_edge": SIDE}, crop_size=square)
    if name == "convnext":  # crop_pct: resize to SIDE / 0.875, crop SIDE
        return ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                              image_size=SIDE), ConvNextImageProcessor(
            size={"shortest_edge": SIDE})
    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                        layer_type="basic"), ViTImageProcessor(size=square)


@functools.cache
def model_dir(name: str) -> Path:
    """``name``'s tiny encoder saved with ``save_pretrained`` (session-wide)."""
    from transformers import AutoModel

    root = session_dir(f"metafit-imgenc-{name}-") / name
    config, processor = _family(name)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(root)
    processor.save_pretrained(root)
    return root


def _trainable(model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_gives_pooled_features_of_grayscale_and_rgb_images(family: str) -> None:
    model = image_encoder_model(3, model_dir(family))
    width = 16
    for images in (torch.rand(4, 1, 28, 28), torch.rand(4, 3, SIDE, SIDE)):
        features = model.body(images)
        assert features.shape == (4, width) and model.feature_dim == width
        assert model(images).shape == (4, 3)
    gray = torch.rand(2, 1, 28, 28)  # one channel is repeated to the encoder's three
    assert torch.allclose(model.body(gray), model.body(gray.expand(-1, 3, -1, -1)))
    assert model.body(gray).std(0).sum() > 0  # the features depend on the image


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scope", ["full", "top", "head", "lora"])
def test_adapt_scopes_train_only_their_parameters(family: str, scope: str) -> None:
    if scope == "lora" and family in ("convnext", "resnet"):
        with pytest.raises(ValueError, match=r"convolutional encoder\); use adapt top"):
            image_encoder_model(3, model_dir(family), adapt="lora")
        return
    model = image_encoder_model(3, model_dir(family), adapt=scope, adapt_layers=1, lora_r=2)
    trainable, every = _trainable(model), {n for n, _ in model.named_parameters()}
    assert {"head.weight", "head.bias"} <= trainable
    body = trainable - {"head.weight", "head.bias"}
    if scope == "full":
        assert trainable == every
    elif scope == "head":
        assert not body
    elif scope == "lora":
        assert body and all("lora_" in n for n in body)
        assert any(".query." in n or ".q_proj." in n for n in body)
    else:
        stack = layer_stack(model.body.encoder)
        top = {f"body.encoder.{n}" for n, m in model.body.encoder.named_modules()
               if m is stack[-1]}.pop()
        lower = {f"body.encoder.{n}" for n, m in model.body.encoder.named_modules()
                 if m is stack[0]}.pop()
        assert any(n.startswith(top + ".") for n in body)
        assert not any(n.startswith(lower + ".") or "embed" in n for n in body)
        assert all(n.startswith(top + ".") or "layernorm" in n for n in body)
    # a step moves exactly the trainable parameters
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).zero_grad()
    model(torch.rand(4, 1, 28, 28)).logsumexp(1).sum().backward()
    for p in model.parameters():
        if p.requires_grad and p.grad is not None:
            p.data -= p.grad
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved <= trainable and "head.weight" in moved


@pytest.mark.parametrize("family", FAMILIES)
def test_preprocessing_reproduces_the_hugging_face_processor(family: str) -> None:
    from transformers import AutoImageProcessor

    model = image_encoder_model(3, model_dir(family))
    processor = AutoImageProcessor.from_pretrained(str(model_dir(family)),
                                                   local_files_only=True)
    rng = np.random.default_rng(1)
    # a smooth image (what photos and glyphs are; noise is the worst case of resampling)
    grid = np.linspace(0, 1, SIDE)
    pixels = (255 * np.stack([np.outer(grid, grid), np.outer(1 - grid, grid),
                              np.full((SIDE, SIDE), rng.random())], -1)).astype(np.uint8)
    theirs = processor(images=Image.fromarray(pixels), return_tensors="pt")["pixel_values"]
    ours = model.body.preprocess(torch.from_numpy(pixels).permute(2, 0, 1)[None] / 255.0)
    assert ours.shape == theirs.shape
    if model.body.processing.resize in (None, (SIDE, SIDE)) and \
            model.body.processing.crop in (None, (SIDE, SIDE)):  # no resampling: equal
        assert torch.allclose(ours, theirs, atol=1e-5)
    else:  # resampled floats (torch) against resampled uint8 (PIL): about a grey level
        assert (ours - theirs).abs().mean() < 0.02
        assert (ours - theirs).abs().max() < 0.15


def _recipe(data: Path, family: str, algorithm: str, adapt: str, **extra: Any):  # type: ignore[no-untyped-def]
    values: dict[str, Any] = dict(
        name=f"tiny_{family}_{algorithm}", dataset="image_folder", data_root=str(data),
        image_size=8, model="image_encoder", image_model=str(model_dir(family)), ways=2,
        shots=1, queries=2, algorithm=algorithm, adapt=adapt, adapt_layers=1, lora_r=2,
        inner_lr=0.1, inner_steps=1, eval_inner_steps=2, meta_batch=2, iterations=2,
        val_every=2, val_episodes=2, test_episodes=2, log_every=1, seed=0)
    values.update(extra)
    return make_recipe(values)


@functools.cache
def _data() -> Path:
    return image_folder(session_dir("metafit-imgenc-data-") / "data")


@functools.cache
def trained_run(family: str, algorithm: str, adapt: str) -> Path:
    root = session_dir(f"metafit-imgenc-run-{family}-")
    Trainer(_recipe(_data(), family, algorithm, adapt), root / "run", progress=False).fit()
    return root / "run"


def test_a_recipe_meta_trains_an_image_encoder_with_lora() -> None:
    from metafit.runs.trained import load_trained

    run = trained_run("vit", "maml", "lora")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in records)
    _, algo = load_trained(run, "last")
    fresh = image_encoder_model(2, model_dir("vit"), adapt="lora", adapt_layers=1, lora_r=2)
    trained = dict(algo.model.named_parameters())
    lora = [n for n, _ in fresh.named_parameters() if "lora_B" in n]
    assert lora and any(trained[n].abs().sum() > 0 for n in lora)  # B starts at zero


@pytest.mark.parametrize(("family", "algorithm", "adapt"),
                         [("dinov2", "protonet", "top"), ("resnet", "maml", "head")])
def test_an_adapted_model_directory_predicts_alone(family: str, algorithm: str, adapt: str,
                                                   tmp_path: Path) -> None:
    run = trained_run(family, algorithm, adapt)
    inputs, labels = load_support(_data(), "image")
    keep = [i for i, lab in enumerate(labels) if lab in ("class00", "class05")]
    support = [inputs[i] for i in keep[:3] + keep[6:9]]
    names = [labels[i] for i in keep[:3] + keep[6:9]]
    model = Adapter.from_run(run).adapt(support, names)
    path = model.save(tmp_path / "model")
    assert (path / "encoder" / PROCESSOR_FILE).is_file()
    assert (path / "encoder" / "config.json").is_file()
    spec = json.loads((path / "model.json").read_text())["preprocessing"]
    assert spec["in_model"]["mean"] == list(model.module.body.processing.mean)
    loaded = AdaptedModel.load(path)
    queries = [inputs[i] for i in (keep[4], keep[10])]
    x = loaded.preprocess(queries)
    assert torch.allclose(loaded.logits(x), model.logits(model.preprocess(queries)), atol=1e-5)
    assert [p["label"] for p in loaded.predict(queries)] == \
        [p["label"] for p in model.predict(queries)]
    assert loaded.arch["batch_norm"] == "none"  # ResNet keeps its pretrained statistics


def test_onnx_export_matches_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from metafit.deploy import onnx_export

    inputs, labels = load_support(_data(), "image")
    model = Adapter.from_run(trained_run("dinov2", "protonet", "top")).adapt(
        inputs[:4] + inputs[6:10], labels[:4] + labels[6:10])
    report = onnx_export.export_onnx(model, tmp_path / "onnx")
    assert report.max_abs_diff <= onnx_export.TOLERANCE
    session = onnx_export.onnx_session(tmp_path / "onnx" / "model.onnx")
    x = model.preprocess(inputs[20:23])  # a batch size never exported
    (logits,) = session.run(["logits"], onnx_export.onnx_feeds("image", x))
    assert np.allclose(logits, model.logits(x).numpy(), atol=1e-4)


def test_frozen_encoder_features_are_cached_and_equal(tmp_path: Path) -> None:
    model = image_encoder_model(2, model_dir("resnet"), adapt="head").eval()
    assert uncacheable_reason(model.body) is None  # BatchNorm on pretrained statistics
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        plain = model.body(x)
        with cached_body(model) as cache:
            first, again = model.body(x), model.body(x[2:5])
        assert cache is not None and cache.misses == 6 and cache.hits == 3
    assert torch.allclose(first, plain, atol=1e-6) and torch.allclose(again, plain[2:5],
                                                                      atol=1e-6)


def test_a_served_image_encoder_adapts_and_predicts(tmp_path: Path) -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from metafit.server import ServerSettings
    from test_serve import AUTH, KEY, LiveServer

    data = _data()
    settings = ServerSettings(target=trained_run("dinov2", "protonet", "top"),
                              state_dir=tmp_path / "state", api_keys=frozenset({KEY}))

    def png(c: int, i: int) -> str:
        return base64.b64encode((data / f"class{c:02d}" / f"{i}.png").read_bytes()).decode()

    server = LiveServer(settings)
    try:
        body = {"examples": [{"image": png(c, i), "label": f"c{c}"} for c in (0, 5)
                             for i in range(3)]}
        r = server.client.post("/v1/adaptations", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        made = r.json()
        queries = [png(c, 4) for c in (0, 5)]
        r = server.client.post(f"/v1/adaptations/{made['id']}/predict",
                               json={"inputs": [{"image": q} for q in queries]}, headers=AUTH)
        assert r.status_code == 200, r.text
        served = r.json()["predictions"]
    finally:
        server.stop()
    local = AdaptedModel.load(settings.adaptations_dir / made["id"])
    decoded = [base64.b64decode(q) for q in queries]
    probs = local.predict_proba(decoded)
    for p, row in zip(served, probs, strict=True):
        assert [p["probabilities"][n] for n in local.label_names] == pytest.approx(
            row.tolist(), abs=1e-5)


@pytest.mark.parametrize(("family", "algorithm", "adapt", "changes", "message"), [
    ("dinov2", "protonet", "top", {"num_hidden_layers": 20000},
     r"num_hidden_layers must be an integer 1\.\.64"),
    ("resnet", "maml", "head", {"depths": [1000, 1]}, r"depths must be positive integers, "
     r"in all at most 64"),
    ("resnet", "maml", "head", {"hidden_sizes": [8, 10**6]}, r"hidden_sizes must be"),
])
def test_a_forged_image_encoder_config_is_refused_before_it_is_built(
        family: str, algorithm: str, adapt: str, changes: dict, message: str,
        tmp_path: Path) -> None:
    from metafit.deploy import ModelDirError
    from test_model_dir_safety import _json_edit, _rewrite

    inputs, labels = load_support(_data(), "image")
    keep = [i for i, lab in enumerate(labels) if lab in ("class00", "class05")]
    model = Adapter.from_run(trained_run(family, algorithm, adapt)).adapt(
        [inputs[i] for i in keep[:2] + keep[6:8]], [labels[i] for i in keep[:2] + keep[6:8]])
    path = model.save(tmp_path / "model")
    # edited and listed with its new checksum, as a forger would
    _rewrite(path, "encoder/config.json", _json_edit(changes))
    with pytest.raises(ModelDirError, match=message):
        AdaptedModel.load(path)
