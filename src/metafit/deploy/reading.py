"""Reading an adapted model directory as untrusted input (see
:mod:`metafit.deploy.adapted` for the layout).

The manifest and every listed file are verified first (:func:`read_model_dir`); then
``model.json`` is checked field by field, the preprocessing against its bounds, and the
architecture it describes is built on the meta device and compared with the weights
before any memory is allocated for it, so a forged ``model.json``, ``recipe.yaml`` or
``encoder/config.json`` cannot make the loader allocate more than the weights file holds.
"""

from __future__ import annotations

import contextlib
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from metafit.config.files import parse_yaml_mapping
from metafit.config.schema import Recipe, make_recipe
from metafit.data.ink_crop import CROPS
from metafit.deploy.errors import ModelDirError
from metafit.deploy.materialise import MAX_VOCABULARY, build_module, encoder_config
from metafit.deploy.modeldir import read_model_dir
from metafit.deploy.preprocess import Preprocessor, TextPreprocessor, preprocessor_from_spec
from metafit.deploy.reject import RejectSetting
from metafit.deploy.weights import load_tensors
from metafit.io import load_torch_file, parse_json, read_bounded, refusal_reason

__all__ = ["read_adapted", "CONTENT", "ENCODER", "MAX_IMAGE_SIZE", "MAX_TEXT_LENGTH"]

CONTENT = "adapted"
ENCODER = "encoder/"


def read_adapted(root: Path) -> dict[str, Any]:
    """The keyword arguments of :class:`~metafit.deploy.adapted.AdaptedModel` stored in the
    model directory ``root``.

    Raises:
        ModelDirError: a missing, incomplete, corrupt or forged directory (the message
            names the directory and the problem).
    """
    from metafit.deploy.quantize import prepare_structure

    manifest, files = read_model_dir(root, CONTENT)
    try:
        spec = _checked_spec(parse_json(files["model.json"], root / "model.json"))
        reject = _reject(spec)
        values = parse_yaml_mapping(files["recipe.yaml"], root / "recipe.yaml")
        values.pop("metafit_version", None)
        recipe = make_recipe(values, str(root / "recipe.yaml"))
        state, support = _tensors(files, manifest["format_version"], root)
        with tempfile.TemporaryDirectory(prefix="metafit-encoder-") as private:
            prep, config = _preprocessing(spec, recipe, files, Path(private))
            if support is not None:
                _check_support(support, prep, len(spec["labels"]), root)
            pad = prep.pad_id if isinstance(prep, TextPreprocessor) else 0
            with torch.device("meta"):  # sizes first: no memory is allocated
                skeleton = build_module(spec["architecture"], recipe, config, pad)
            _check_size(skeleton, state, root)
            module = build_module(spec["architecture"], recipe, config, pad)
        prepare_structure(module, spec["compression"])
        module.load_state_dict(state, strict=True)
        if isinstance(prep, TextPreprocessor) and hasattr(module.body, "check_token_map"):
            cast(Any, module.body).check_token_map(len(prep.load()))  # a trimmed table
        assets = {rel: data for rel, data in files.items() if rel.startswith(ENCODER)}
        return {"module": module, "label_names": spec["labels"], "recipe": recipe,
                "arch": spec["architecture"], "preprocessor": prep,
                "info": spec["adaptation"], "assets": assets, "support": support,
                "compression": spec["compression"], "reject": reject}
    except ModelDirError:
        raise
    except (KeyError, ValueError, RuntimeError, TypeError, OSError) as e:
        raise ModelDirError(f"{root}: cannot rebuild the model: "
                            f"{type(e).__name__}: {_first_line(e, 300)}") from None

#: The fields of model.json and the JSON type each must have.
_SPEC_FIELDS = {"labels": list, "architecture": dict, "preprocessing": dict,
                "adaptation": dict, "compression": dict}


def _checked_spec(spec: object) -> dict[str, Any]:
    """``model.json``'s content, its fields of the right JSON types (labels: strings)."""
    if not isinstance(spec, dict):
        raise ValueError("model.json must hold a JSON object")
    for key, kind in _SPEC_FIELDS.items():
        if not isinstance(spec.get(key), kind):
            raise ValueError(f"model.json: {key!r} must be a JSON {kind.__name__}")
    if not all(isinstance(name, str) for name in spec["labels"]):
        raise ValueError("model.json: every label must be a string")
    info = spec["adaptation"]
    steps = info.get("steps")
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool)
                              or not 0 <= steps <= MAX_STORED_STEPS):
        # an update adapts again with the stored steps: a forged 10**9 would never end
        raise ValueError(f"model.json: adaptation.steps must be an integer 0.."
                         f"{MAX_STORED_STEPS}, not {str(steps)[:40]!r}")
    for key in ("source", "update"):
        if info.get(key) is not None and not isinstance(info[key], dict):
            raise ValueError(f"model.json: adaptation.{key} must be a JSON object")
    return spec


def _reject(spec: dict[str, Any]) -> RejectSetting | None:
    """The reject setting of ``model.json`` (absent or null: none), checked field by field
    (:meth:`RejectSetting.from_dict <metafit.deploy.reject.RejectSetting.from_dict>`)."""
    value = spec.get("reject")
    return None if value is None else RejectSetting.from_dict(value, spec["labels"])


def _tensors(files: dict[str, bytes], version: int, root: Path
             ) -> tuple[dict[str, Any], tuple[Tensor, Tensor] | None]:
    """The weights and the support set of a verified model directory."""
    if version == 1:  # written by metafit before safetensors
        state = _unpickle_safely(files["weights.pt"], root / "weights.pt")
        saved = (_unpickle_safely(files["support.pt"], root / "support.pt")
                 if "support.pt" in files else None)
    else:
        state = load_tensors(files["weights.safetensors"], f"{root}/weights.safetensors")
        saved = (load_tensors(files["support.safetensors"], f"{root}/support.safetensors")
                 if "support.safetensors" in files else None)
    if saved is None:
        return state, None
    if not (isinstance(saved.get("x"), Tensor) and isinstance(saved.get("y"), Tensor)):
        raise ModelDirError(f"{root}: the stored support set has no tensors 'x' and 'y'")
    return state, (saved["x"], saved["y"])


def _check_support(support: tuple[Tensor, Tensor], prep: Preprocessor, labels: int,
                   root: Path) -> None:
    """Refuse a stored support set that does not fit the model: ``x [S, *input]`` of the
    preprocessing's input shape (images ``[S, C, H, W]`` at its size and channels, token
    ids ``[S, L]`` with ``L`` at most its length), ``y [S]`` of integer labels in
    ``0 .. labels - 1``."""
    x, y = support
    where = f"{root}: the stored support set"
    if y.dim() != 1 or x.dim() < 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ModelDirError(f"{where} must be x [S, ...] and y [S] with S > 0; got x "
                            f"{tuple(x.shape)}, y {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ModelDirError(f"{where}: y must hold integer labels, not {y.dtype}")
    if int(y.min()) < 0 or int(y.max()) >= labels:
        raise ModelDirError(f"{where}: y must be label numbers 0..{labels - 1} (model.json "
                            f"lists {labels} labels); it holds {int(y.min())}..{int(y.max())}")
    if isinstance(prep, TextPreprocessor):
        ok = x.dim() == 2 and not x.dtype.is_floating_point and x.shape[1] <= prep.max_length
        want = f"[S, L] token ids with L <= {prep.max_length}"
    else:
        size, channels = getattr(prep, "image_size", None), getattr(prep, "channels", None)
        ok = tuple(x.shape[1:]) == (channels, size, size) and x.dtype.is_floating_point
        want = f"[S, {channels}, {size}, {size}] floats"
    if not ok:
        raise ModelDirError(f"{where}: x must be {want} for this model's preprocessing; got "
                            f"{tuple(x.shape)} {x.dtype}")


def _count(value: Any) -> int:
    """Values held by a state-dict entry (tensors, tuples of them)."""
    if isinstance(value, Tensor):
        return value.numel()
    if isinstance(value, tuple | list):
        return sum(_count(v) for v in value)
    return 0


def _check_size(skeleton: torch.nn.Module, state: dict[str, Any], root: Path) -> None:
    """Refuse an architecture (``model.json``, ``recipe.yaml``, ``encoder/config.json``)
    that needs more values than the weights file holds, before its memory is allocated
    (``skeleton``: the module built on the meta device). A quantized model holds as many
    values as its float structure, plus scales."""
    needed = sum(t.numel() for t in skeleton.state_dict().values())
    held = sum(_count(v) for v in state.values())
    if needed > held:
        raise ModelDirError(f"{root}: the architecture described by model.json and "
                            f"recipe.yaml needs {needed:,} values but the weights hold "
                            f"{held:,}: the files do not belong together")


#: Most inner steps a stored adaptation may name (an update adapts again with them).
MAX_STORED_STEPS = 10_000
#: Bounds of a model directory's preprocessing (model.json), checked before any input is
#: resized or tokenised to them.
MAX_IMAGE_SIZE = 4096
MAX_TEXT_LENGTH = 8192


def _check_preprocessing(spec: dict[str, Any]) -> None:
    kind = spec.get("type")
    if kind == "image":
        size = spec.get("image_size")
        if not isinstance(size, int) or not 0 < size <= MAX_IMAGE_SIZE:
            raise ValueError(f"preprocessing.image_size must be 1..{MAX_IMAGE_SIZE}")
        if spec.get("crop", "none") not in CROPS:
            raise ValueError(f"preprocessing.crop must be one of {', '.join(CROPS)}")
    elif kind == "text":
        length, pad = spec.get("max_length"), spec.get("pad_id")
        if not isinstance(length, int) or not 2 < length <= MAX_TEXT_LENGTH:
            raise ValueError(f"preprocessing.max_length must be 3..{MAX_TEXT_LENGTH}")
        if not isinstance(pad, int) or pad < 0:
            raise ValueError("preprocessing.pad_id must be an integer >= 0")
        if spec.get("tokenizer") != ENCODER:
            raise ValueError(f"preprocessing.tokenizer must be {ENCODER!r}")
    else:
        raise ValueError(f"preprocessing.type must be 'image' or 'text', not {kind!r}")


def _unpickle_safely(data: bytes, where: Path) -> Any:
    """A format-1 file: ``torch.load(weights_only=True)``, which refuses any object but
    tensors and plain values (they could run code)."""
    from metafit.deploy.quantize import quiet_quantization

    try:
        with quiet_quantization():  # quantized tensors load through TypedStorage
            return load_torch_file(data, where)
    except pickle.UnpicklingError as e:
        raise ModelDirError(f"{where} holds objects other than tensors and plain values, "
                            f"which metafit never loads (they could run code): "
                            f"{refusal_reason(e)}") from None


def _preprocessing(spec: dict[str, Any], recipe: Recipe, files: dict[str, bytes],
                   private: Path) -> tuple[Preprocessor, Any]:
    """The preprocessor and (text) the encoder config of a verified model directory. A
    text model's tokenizer and config are read from ``private``, a copy of the verified
    ``encoder/`` files alone (never the directory itself, which may hold other files);
    the tokenizer is loaded at once."""
    prep_spec = spec["preprocessing"]
    _check_preprocessing(prep_spec)
    for rel, data in files.items():
        if rel.startswith(ENCODER):
            (private / rel).parent.mkdir(exist_ok=True)
            (private / rel).write_bytes(data)
    prep = preprocessor_from_spec(prep_spec, private)
    if isinstance(prep, TextPreprocessor):
        with _encoder_files():
            prep.load()  # now, while the private copy exists
    config: Any = None
    if recipe.model == "text":
        with _encoder_files():
            config = encoder_config(private / ENCODER)
        _check_text_encoder(config, prep, "vocabulary" in spec["architecture"])
    elif recipe.model == "image_encoder":
        config = _image_encoder_spec(private / ENCODER)
    return prep, config


def _first_line(error: BaseException, limit: int) -> str:
    """The first line of ``error``'s message, at most ``limit`` characters (transformers'
    messages run to pages: every model type it knows)."""
    text = str(error).strip()
    return text.splitlines()[0][:limit] if text else ""


@contextlib.contextmanager
def _encoder_files() -> Iterator[None]:
    """Reading the ``encoder/`` files with transformers: its own errors (strict-dataclass
    validation, an unknown dtype or model type, ...) become one-line ``ValueError``s."""
    try:
        yield
    except OSError:
        raise
    except Exception as e:  # noqa: BLE001 - transformers raises many classes, long texts
        raise ValueError(f"encoder/ (config.json, tokenizer files): {type(e).__name__}: "
                         f"{_first_line(e, 200)}") from None


#: Bounds of a text model's ``encoder/config.json``, checked before the encoder is built
#: (even on the meta device, each layer costs time and memory to build).
ENCODER_BOUNDS = {"num_hidden_layers": 64, "hidden_size": 8192, "num_attention_heads": 256,
                  "intermediate_size": 65536, "max_position_embeddings": 65536,
                  "vocab_size": MAX_VOCABULARY}


def _check_encoder_sizes(config: Any) -> None:
    """Refuse an encoder config (text or image) out of :data:`ENCODER_BOUNDS`, with a head
    count that does not divide the width, or (convolutional image encoders) stages of
    more than 64 blocks or 8192 channels in all."""
    for key, most in ENCODER_BOUNDS.items():
        value = getattr(config, key, None)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
            raise ValueError(f"encoder/config.json: {key} must be an integer 1..{most}, "
                             f"not {str(value)[:40]!r}")
    width, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads",
                                                                 None)
    if width is not None and heads is not None and width % heads:
        raise ValueError(f"encoder/config.json: hidden_size {width} is not a multiple of "
                         f"num_attention_heads {heads}")
    for key, most in (("depths", ENCODER_BOUNDS["num_hidden_layers"]),
                      ("hidden_sizes", ENCODER_BOUNDS["hidden_size"])):
        values = getattr(config, key, None)
        if values is None:
            continue
        if not (isinstance(values, list | tuple) and values
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                        for v in values)
                and (sum(values) if key == "depths" else max(values)) <= most):
            raise ValueError(f"encoder/config.json: {key} must be positive integers, "
                             f"{'in all' if key == 'depths' else 'each'} at most {most}")


def _check_text_encoder(config: Any, prep: Preprocessor, trimmed: bool) -> None:
    """Refuse an ``encoder/config.json`` out of :data:`ENCODER_BOUNDS` (or with a head count
    that does not divide the width), and a tokenizer the encoder cannot read: ids past its
    token table (unless the table was trimmed, ``trimmed``: the token map is checked then),
    ``max_length`` past its positions, or a tokenizer that fails on plain text."""
    _check_encoder_sizes(config)
    if not isinstance(prep, TextPreprocessor):
        return
    tokenizer = prep.load()
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and prep.max_length > positions:
        raise ValueError(f"model.json: preprocessing.max_length {prep.max_length} is past the "
                         f"encoder's {positions} positions (encoder/config.json)")
    rows = getattr(config, "vocab_size", None)
    if rows is not None and not trimmed:
        largest = max(tokenizer.get_vocab().values(), default=0)
        if largest >= rows or prep.pad_id >= rows:
            raise ValueError(f"encoder/: the tokenizer's ids reach {max(largest, prep.pad_id)}"
                             f" but the encoder's token table has {rows} rows "
                             "(encoder/config.json vocab_size)")
    try:
        tokenizer(["a plain test sentence, 123."], truncation=True, max_length=prep.max_length)
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises bare Exceptions
        raise ValueError(f"encoder/: the tokenizer fails on plain text ({type(e).__name__}: "
                         f"{str(e)[:120]})") from None


def _image_encoder_spec(encoder_dir: Path) -> Any:
    """The :class:`~metafit.models.image_encoder.EncoderSpec` of an image_encoder model
    directory's verified ``encoder/`` copy (its config.json and preprocessor_config.json,
    parsed as JSON: no processor class is instantiated)."""
    from metafit.models.image_encoder import PROCESSOR_FILE, EncoderSpec, ImageProcessing

    with _encoder_files():
        config = encoder_config(encoder_dir)
    _check_encoder_sizes(config)
    processor = parse_json(read_bounded(encoder_dir / PROCESSOR_FILE, 2**20),
                           f"encoder/{PROCESSOR_FILE}")
    if not isinstance(processor, dict):
        raise ValueError(f"encoder/{PROCESSOR_FILE} must hold a JSON object")
    processing = ImageProcessing.from_config(processor, int(getattr(config, "num_channels", 3)))
    side = max((*(processing.resize or ()), *(processing.crop or ())), default=0)
    if side > MAX_IMAGE_SIZE:
        raise ValueError(f"encoder/{PROCESSOR_FILE}: sizes must be at most {MAX_IMAGE_SIZE}")
    return EncoderSpec(config, processing)
