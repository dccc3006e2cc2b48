"""A pretrained Hugging Face image encoder as a few-shot model (``text`` extra:
transformers, peft).

``image_encoder_model(...)`` returns a :class:`~metafit.models.base.FewShotModel` whose
``body`` maps images ``[B, C, S, S]`` (float in [0, 1], as every metafit image dataset and
:class:`~metafit.deploy.preprocess.ImagePreprocessor` make them) to pooled features
``[B, H]`` and whose ``head`` is a linear layer ``[B, H] -> [B, ways]``. The encoder comes
from a local model directory (``config.json``, weights, ``preprocessor_config.json``) via
``transformers.AutoModel``; nothing is downloaded.

The pooled features, by family (``config.model_type``):

- ``vit``: the ``[CLS]`` token of the last hidden state (after the final LayerNorm), as
  ``ViTForImageClassification`` classifies; ViT's pooler (a dense + tanh layer that many
  checkpoints leave untrained) is not built;
- ``dinov2``: ``pooler_output``, the final-LayerNorm ``[CLS]`` token;
- ``clip_vision_model`` (CLIP's vision tower, saved as ``CLIPVisionModel``):
  ``pooler_output``, the post-LayerNorm ``[CLS]`` token (before CLIP's projection);
- ``convnext``, ``convnextv2``: ``pooler_output``, the LayerNorm of the global average;
- ``resnet``: ``pooler_output``, the global average pool, flattened;
- any other: ``pooler_output`` when the model has one, else the first token of a sequence
  output or the spatial mean of a feature map.

Preprocessing (:class:`ImageProcessing`): the image processor's own recorded settings
(``preprocessor_config.json``, read through ``AutoImageProcessor``) are applied *inside*
the body, in torch: the input's channels converted to the encoder's (grayscale repeated to
RGB, Omniglot's case), resize to the processor's size (its ``resample``: bilinear, bicubic
or nearest, antialiased), centre crop (the processor's ``crop_size``, or ConvNeXt's
``crop_pct``), rescale and normalise with its ``image_mean`` / ``image_std``. Being part of
the module, it goes with the weights into every adapted model directory, its ONNX export
and ``metafit serve`` without any other code. Rescaling and normalising equal the Hugging
Face processor's to float rounding; resizing is torch's interpolation on floats, not PIL's
on uint8, so resized pixels differ from the processor's by about one grey level (tested).

BatchNorm layers (ResNet) keep their pretrained running statistics: the body holds them in
eval mode whatever mode it is put in, so a prediction depends on its input only. Dropout
and stochastic depth are off (``dropout=0``), as for text encoders.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metafit.models.adapt import AdaptScope, apply_adapt_scope
from metafit.models.base import FewShotModel, count_parameters, make_head

__all__ = ["ImageEncoderBody", "ImageProcessing", "EncoderSpec", "image_encoder_model",
           "check_image_model_dir", "load_image_encoder", "encoder_from_config",
           "read_processing", "PROCESSOR_FILE"]

log = logging.getLogger(__name__)

PROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: PIL resample codes of a processor config -> torch interpolation modes (LANCZOS, 1, and
#: the rarer ones have no torch mode: bicubic is the nearest).
_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "bicubic", 4: "bilinear",
             5: "bicubic"}
#: Config keys of dropout and stochastic depth, set to the model's ``dropout``.
_DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                 "attention_dropout", "drop_path_rate")


@dataclass(frozen=True)
class ImageProcessing:
    """An image processor's recorded resize, crop and normalisation, as plain values.

    ``resize``: ``(height, width)`` of the resize (None: no resize); ``resample``: torch
    interpolation mode; ``crop``: ``(height, width)`` of the centre crop (None: none);
    ``scale``: factor on the [0, 1] inputs (the processor's ``rescale_factor * 255``: 1
    for the usual 1/255); ``mean``, ``std``: per-channel normalisation (None: none);
    ``channels``: what the encoder takes.
    """

    resize: tuple[int, int] | None
    resample: str
    crop: tuple[int, int] | None
    scale: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    channels: int = 3

    @classmethod
    def from_config(cls, d: dict[str, Any], channels: int = 3) -> ImageProcessing:
        """From an image processor's config dict (``preprocessor_config.json``, or
        ``image_processor.to_dict()``).

        Raises:
            ValueError: a size the square resize cannot honour (``longest_edge`` only).
        """
        size = _hw(d.get("size")) if d.get("do_resize", True) else None
        resize = crop = None
        if size is not None:
            if "shortest_edge" in size:
                s = int(size["shortest_edge"])
                pct = d.get("crop_pct")
                if pct is not None and s < 384:  # ConvNeXt: resize to s / crop_pct, crop s
                    resize, crop = (int(s / pct),) * 2, (s, s)
                else:
                    resize = (s, s)
            elif "height" in size and "width" in size:
                resize = (int(size["height"]), int(size["width"]))
            else:
                raise ValueError(f"image processor size {size} is not supported (give height "
                                 "and width, or shortest_edge)")
        if d.get("do_center_crop") and d.get("crop_size") is not None:
            c = _hw(d["crop_size"]) or {}
            crop = (int(c["height"]), int(c["width"]))
        scale = float(d.get("rescale_factor", 1 / 255)) * 255.0 if d.get("do_rescale", True) \
            else 255.0
        normalize = d.get("do_normalize", True) and d.get("image_mean") is not None
        mean = tuple(float(v) for v in _list(d.get("image_mean"), channels)) if normalize \
            else None
        std = tuple(float(v) for v in _list(d.get("image_std"), channels)) if normalize \
            else None
        resample = _RESAMPLE.get(int(d.get("resample", 2)), "bilinear")
        return cls(resize, resample, crop, scale, mean, std, channels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (for model.json)."""
        return asdict(self)


def _hw(size: Any) -> dict[str, Any] | None:
    """A processor size as a dict (an int means a square)."""
    if size is None:
        return None
    if isinstance(size, int):
        return {"height": size, "width": size}
    return {k: v for k, v in dict(size).items() if v is not None}


def _list(values: Any, channels: int) -> list[float]:
    """Per-channel values (a scalar repeated)."""
    if isinstance(values, int | float):
        return [float(values)] * channels
    return [float(v) for v in values]


@dataclass(frozen=True)
class EncoderSpec:
    """What rebuilds an image encoder without its weights: the ``transformers`` config
    and the recorded preprocessing."""

    config: Any
    processing: ImageProcessing


class ImageEncoderBody(nn.Module):
    """Images ``[B, C, S, S]`` in [0, 1] -> pooled features ``[B, H]`` (module docstring:
    preprocessing, then the encoder, then the family's pooling)."""

    #: Hugging Face modules are run task by task (as text encoders are): no vmap.
    per_task_only = True

    def __init__(self, encoder: nn.Module, processing: ImageProcessing) -> None:
        super().__init__()
        self.encoder = encoder
        self.processing = processing
        self.mean: Tensor
        self.std: Tensor
        self.model_type = str(getattr(cast(Any, encoder).config, "model_type", ""))
        c = processing.channels
        mean = processing.mean or (0.0,) * c
        std = processing.std or (1.0,) * c
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.train(self.training)

    def train(self, mode: bool = True) -> ImageEncoderBody:
        """Set the mode; BatchNorm layers stay in eval mode (their pretrained statistics)."""
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def preprocess(self, x: Tensor) -> Tensor:
        """``x [B, C, S, S]`` in [0, 1] -> the encoder's ``pixel_values [B, C', H', W']``."""
        p = self.processing
        if x.shape[1] != p.channels:
            if x.shape[1] == 1:
                x = x.expand(-1, p.channels, -1, -1)  # grayscale -> RGB: [B, C', S, S]
            elif p.channels == 1:
                x = x.mean(1, keepdim=True)  # [B, 1, S, S]
            else:
                raise ValueError(f"the encoder takes {p.channels} channels, the images have "
                                 f"{x.shape[1]}")
        if p.resize is not None and tuple(x.shape[-2:]) != p.resize:
            if p.resample == "nearest":
                x = F.interpolate(x, size=p.resize, mode="nearest")
            else:
                x = F.interpolate(x, size=p.resize, mode=p.resample, align_corners=False,
                                  antialias=True)  # [B, C', h, w]
        if p.crop is not None:
            h, w = x.shape[-2:]
            top, left = max((h - p.crop[0]) // 2, 0), max((w - p.crop[1]) // 2, 0)
            x = x[..., top:top + p.crop[0], left:left + p.crop[1]]
        if p.scale != 1.0:
            x = x * p.scale
        return (x - self.mean) / self.std  # [B, C', H', W']

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, S, S]`` -> ``[B, H]``."""
        if not x.is_floating_point():
            raise TypeError(f"an image encoder takes float images in [0, 1], got {x.dtype}")
        out = self.encoder(pixel_values=self.preprocess(x))
        if self.model_type == "vit":
            return out.last_hidden_state[:, 0]  # [B, H]
        pooled = getattr(out, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)  # [B, H]
        hidden = out.last_hidden_state
        return hidden[:, 0] if hidden.dim() == 3 else hidden.mean((2, 3))  # [B, H]


def check_image_model_dir(path: str | Path | None, weights: bool = True) -> Path:
    """``path`` as a checked image model directory.

    Raises:
        ModelDirError: None, not a directory, or no ``config.json``, weights (when
            ``weights``) or ``preprocessor_config.json``; the message lists what is missing.
    """
    from metafit.models.tokenizer import ModelDirError

    if path is None:
        raise ModelDirError("model image_encoder needs image_model: a local Hugging Face "
                            "image model directory (docs/images.md)")
    root = Path(path)
    if not root.is_dir():
        raise ModelDirError(f"image model directory {root} does not exist")
    missing = [f for f in ("config.json", PROCESSOR_FILE) if not (root / f).is_file()]
    if weights and not any((root / f).is_file() for f in WEIGHT_FILES):
        missing.append(" or ".join(WEIGHT_FILES))
    if missing:
        raise ModelDirError(f"image model directory {root} is missing {', '.join(missing)}"
                            + (" (save the image processor beside the model: "
                               "AutoImageProcessor.save_pretrained)"
                               if PROCESSOR_FILE in missing else ""))
    return root


def read_processing(root: Path, channels: int = 3) -> tuple[ImageProcessing, dict[str, Any]]:
    """The recorded preprocessing of the image model directory ``root`` and the processor's
    full config (``AutoImageProcessor``'s, with its class defaults filled in)."""
    import transformers
    from transformers import AutoImageProcessor

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "requires torchvision; falling back to PIL"
    try:
        processor = AutoImageProcessor.from_pretrained(str(root), local_files_only=True)
        d = json.loads(processor.to_json_string())
    finally:
        transformers.logging.set_verbosity(verbosity)
    return ImageProcessing.from_config(d, channels), d


def _quiet_config(root: Path, dropout: float) -> Any:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(root), local_files_only=True)
    for key in _DROPOUT_KEYS:
        if hasattr(config, key):
            setattr(config, key, dropout)
    return config


def _kwargs(config: Any) -> dict[str, Any]:
    """Keyword arguments of the family's constructor (eager attention, no ViT pooler)."""
    kwargs: dict[str, Any] = {}
    if getattr(config, "model_type", "") == "vit":
        kwargs["add_pooling_layer"] = False
    if getattr(config, "model_type", "") not in ("resnet", "convnext", "convnextv2"):
        kwargs["attn_implementation"] = "eager"  # second-order MAML through attention
    return kwargs


def load_image_encoder(path: str | Path | None, dropout: float = 0.0
                       ) -> tuple[nn.Module, ImageProcessing, dict[str, Any]]:
    """The pretrained encoder of a local image model directory, its preprocessing and the
    image processor's config (to be recorded in model directories)."""
    import transformers
    from transformers import AutoModel

    root = check_image_model_dir(path)
    config = _quiet_config(root, dropout)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "some weights were not used" and the like
    transformers.logging.disable_progress_bar()
    try:
        encoder = AutoModel.from_pretrained(str(root), config=config, local_files_only=True,
                                      **_kwargs(config))
    finally:
        transformers.logging.set_verbosity(verbosity)
        transformers.logging.enable_progress_bar()
    processing, processor = read_processing(root, int(getattr(config, "num_channels", 3)))
    return encoder, processing, processor


def encoder_from_config(spec: EncoderSpec) -> ImageEncoderBody:
    """An image body built from its config and preprocessing alone (no pretrained weights
    are read: they come with a state dict)."""
    import transformers
    from transformers import AutoModel

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        encoder = AutoModel.from_config(spec.config, **_kwargs(spec.config))
    finally:
        transformers.logging.set_verbosity(verbosity)
    return ImageEncoderBody(encoder, spec.processing)


def feature_width(config: Any) -> int:
    """H, the width of the pooled features: the last stage's (ConvNeXt, ResNet), else the
    hidden size."""
    sizes = getattr(config, "hidden_sizes", None)
    return int(sizes[-1]) if sizes else int(config.hidden_size)


def image_encoder_model(out_features: int | None, path: str | Path | None,
                        adapt: AdaptScope = "full", adapt_layers: int = 2, lora_r: int = 8,
                        lora_alpha: int = 16, dropout: float = 0.0) -> FewShotModel:
    """A pretrained image encoder + a linear ``out_features``-way head (None: no head, for
    ProtoNet), with the ``adapt`` scope applied (:func:`metafit.models.adapt.
    apply_adapt_scope`). Logs the trainable parameter count."""
    encoder, processing, _ = load_image_encoder(path, dropout)
    body = ImageEncoderBody(encoder, processing)
    width = feature_width(cast(Any, encoder).config)
    model = FewShotModel(body, make_head(width, out_features), width)
    apply_adapt_scope(model, adapt, adapt_layers, lora_r, lora_alpha)
    trainable, total = count_parameters(model)
    log.debug("image encoder (%s, adapt=%s): %s of %s parameters trainable", body.model_type,
              adapt, f"{trainable:,}", f"{total:,}")
    return model
