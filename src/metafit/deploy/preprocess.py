"""Turning a user's inputs into the tensors a model was trained on, exactly as the training
data were made, and reading a support set from disk.

Images (:class:`ImagePreprocessor`): encoded files (PNG, JPEG, ... as bytes or paths) and
PIL images are decoded like the datasets decode them (:func:`metafit.data.image_folder.
decode_image`: PIL conversion to grayscale ``"L"`` or ``"RGB"``, the crop to the ink
where the recipe set ``image_crop: ink``, Lanczos resize to the model's size), inverted
where the training data were (Omniglot), scaled to [0, 1]: ``[M, C, S, S]`` float32.
Decoded pixels (uint8 numpy arrays) are taken as they are, so they must already have the
model's size and channels, ``[S, S]`` (one channel), ``[S, S, C]`` or ``[C, S, S]``,
and be cropped as the model's ``crop`` says.

Texts (:class:`TextPreprocessor`): the recipe's tokenizer and ``max_length``
(:func:`metafit.models.tokenizer.encode`): token ids ``[M, max_length]`` long, padded
with the pad id.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from metafit.config.schema import Recipe
from metafit.data.errors import DatasetError
from metafit.deploy.errors import InputError, SupportError

__all__ = ["ImagePreprocessor", "TextPreprocessor", "Preprocessor", "load_support",
           "preprocessor_for", "preprocessor_from_spec", "INVERTED_DATASETS"]

#: Datasets whose images are stored inverted (dark strokes on white become bright on 0).
INVERTED_DATASETS = frozenset({"omniglot"})


#: Longest text (characters) preprocessed: a model reads at most 8192 tokens of it, and
#: tokenising takes about 150 times a text's size in memory.
MAX_TEXT_CHARACTERS = 100_000


def _describe(item: object, index: int) -> str:
    """How an error message names input ``index``: its path, else its position."""
    if isinstance(item, str | os.PathLike):
        return f"input {index} ({item})"
    return f"input {index}"


class ImagePreprocessor:
    """Images -> ``[M, channels, image_size, image_size]`` float32 in [0, 1].

    Args:
        image_size: side of the square model input.
        channels: 1 (grayscale) or 3 (RGB).
        invert: ``255 - x`` before scaling (the training data were inverted: Omniglot).
        max_pixels: most pixels (width x height) an encoded input may declare; a larger
            one is refused from its header, before decoding (default: PIL's own bomb
            limit, :data:`metafit.data.image_folder.MAX_IMAGE_PIXELS`; None: no cap but
            PIL's). Not part of :meth:`spec`: a deployment setting, not the model's.
        crop: ``"ink"``: files and PIL images are cropped to the square around their
            drawing before the resize, as the training data were
            (:mod:`metafit.data.ink_crop`); ``"none"``: the whole image.
    """

    kind = "image"

    def __init__(self, image_size: int, channels: int, invert: bool,
                 max_pixels: int | None = None, crop: str = "none") -> None:
        from metafit.data.image_folder import MAX_IMAGE_PIXELS
        from metafit.data.ink_crop import check_crop

        check_crop(crop)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if max_pixels is not None and max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.invert = bool(invert)
        self.crop = crop
        self.max_pixels: int | None = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels

    def spec(self) -> dict[str, Any]:
        """The JSON description stored in a model directory (``crop`` only when not
        ``"none"``: model directories made before the option read the same)."""
        spec = {"type": "image", "image_size": self.image_size, "channels": self.channels,
                "invert": self.invert, "resize": "lanczos", "scale": "1/255",
                "layout": "NCHW float32"}
        return spec if self.crop == "none" else {**spec, "crop": self.crop}

    def _pixels(self, item: Any, index: int, error: type[InputError]) -> np.ndarray:
        """``uint8 [S, S, C]`` of one input."""
        from metafit.data.image_folder import ImageTooLarge, decode_image

        size, c = self.image_size, self.channels
        if isinstance(item, np.ndarray):
            return self._array(item, index, error)
        if isinstance(item, str | os.PathLike):
            item = Path(item)
            if not item.is_file():
                raise error(f"{_describe(item, index)}: no such image file")
        elif not isinstance(item, bytes | bytearray | Image.Image):
            raise error(f"input {index}: an image must be encoded bytes, a path, a PIL image "
                        f"or a uint8 numpy array, got {type(item).__name__}")
        source = bytes(item) if isinstance(item, bytearray) else item
        try:
            pixels = decode_image(source, size, "L" if c == 1 else "RGB", self.max_pixels,
                                  self.crop)
        except ImageTooLarge as e:
            raise error(f"{_describe(item, index)}: {e}") from e
        except Exception as e:  # any decoder failure: the input is not an image
            raise error(f"{_describe(item, index)}: cannot decode the image ({e})") from e
        return pixels.reshape(size, size, c)

    def _array(self, a: np.ndarray, index: int, error: type[InputError]) -> np.ndarray:
        size, c = self.image_size, self.channels
        if a.dtype != np.uint8:
            raise error(f"input {index}: a pixel array must be uint8 (0..255), got {a.dtype}")
        if a.ndim == 2 and c == 1:
            a = a[:, :, None]
        elif a.ndim == 3 and a.shape[0] == c and a.shape[2] != c:
            a = a.transpose(1, 2, 0)
        if a.shape != (size, size, c):
            raise error(f"input {index}: image of shape {tuple(a.shape)}, but the model takes "
                        f"{size}x{size} with {c} channel(s) ({size}, {size}, {c}); pass the "
                        "encoded file to have it converted and resized as in training")
        return a

    def __call__(self, inputs: Sequence[Any], error: type[InputError] = InputError) -> Tensor:
        """``inputs`` (M images) -> ``[M, C, S, S]`` float32.

        Raises:
            InputError (or ``error``): no inputs, an undecodable file, a file declaring
                more than ``max_pixels`` pixels (refused before decoding), an array of the
                wrong shape or dtype; the message names the input.
        """
        if len(inputs) == 0:
            raise error("no images given")
        pixels = torch.from_numpy(np.stack([self._pixels(item, i, error)
                                            for i, item in enumerate(inputs)]))  # [M, S, S, C]
        if self.invert:  # in uint8, as TensorClassDataset does, so the floats are identical
            pixels = 255 - pixels
        return pixels.permute(0, 3, 1, 2).float().mul_(1.0 / 255.0)  # [M, C, S, S]


class TextPreprocessor:
    """Texts -> token ids ``[M, max_length]`` with the tokenizer in ``tokenizer_dir``.

    The tokenizer is loaded on first use and called under a lock (a fast tokenizer with
    padding and truncation set is not safe to call from several threads at once).
    """

    kind = "text"

    def __init__(self, tokenizer_dir: str | Path, max_length: int, pad_id: int = 0) -> None:
        self.tokenizer_dir = Path(tokenizer_dir)
        self.max_length = int(max_length)
        self.pad_id = int(pad_id)
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def spec(self) -> dict[str, Any]:
        """The JSON description stored in a model directory."""
        return {"type": "text", "tokenizer": "encoder/", "max_length": self.max_length,
                "pad_id": self.pad_id, "layout": "input_ids int64 [B, L]; attention_mask = "
                "input_ids != pad_id"}

    def __call__(self, inputs: Sequence[Any], error: type[InputError] = InputError) -> Tensor:
        """``inputs`` (M texts) -> ``[M, max_length]`` long.

        Raises:
            InputError (or ``error``): no texts, a text that is not a string or is empty.
        """
        from metafit.models.tokenizer import encode

        if len(inputs) == 0:
            raise error("no texts given")
        for i, t in enumerate(inputs):
            if not isinstance(t, str):
                raise error(f"input {i}: a text must be a string, got {type(t).__name__}")
            if not t.strip():
                raise error(f"input {i}: empty text")
            if len(t) > MAX_TEXT_CHARACTERS:
                raise error(f"input {i}: {len(t):,} characters, over the limit of "
                            f"{MAX_TEXT_CHARACTERS:,} for one text (tokenising takes about "
                            "150 times a text's size in memory)")
        tok = self.load()
        with self._lock:
            return encode(tok, [t.strip() for t in inputs], self.max_length)

    def load(self) -> Any:
        """The tokenizer, loaded on the first call."""
        from metafit.models.tokenizer import load_tokenizer

        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = load_tokenizer(self.tokenizer_dir)
            return self._tokenizer


Preprocessor = ImagePreprocessor | TextPreprocessor


def preprocessor_for(recipe: Recipe) -> Preprocessor:
    """The preprocessing of ``recipe``'s training data.

    Raises:
        ValueError: a regression recipe (sinusoid): nothing to classify.
    """
    if recipe.is_regression:
        raise ValueError(f"dataset '{recipe.dataset}' is a regression task family; adapt "
                         "and predict take labelled images or texts")
    if recipe.model == "text":
        from metafit.models.tokenizer import check_model_dir, pad_id

        root = check_model_dir(recipe.text_model, weights=False)
        return TextPreprocessor(root, recipe.max_length, pad_id(root))
    return ImagePreprocessor(recipe.image_size, recipe.channels,
                             recipe.dataset in INVERTED_DATASETS, crop=recipe.image_crop)


def preprocessor_from_spec(spec: dict[str, Any], root: Path) -> Preprocessor:
    """The preprocessing stored in a model directory ``root`` (tokenizer in ``root``)."""
    if spec["type"] == "image":
        return ImagePreprocessor(spec["image_size"], spec["channels"], spec["invert"],
                                 crop=spec.get("crop", "none"))
    return TextPreprocessor(root / spec["tokenizer"], spec["max_length"], spec["pad_id"])


def load_support(path: str | os.PathLike[str], kind: str, text_column: str = "text",
                 label_column: str = "category", image_column: str = "image",
                 absolute_paths: bool = False) -> tuple[list[Any], list[str]]:
    """A support set from disk: ``(inputs, labels)``.

    A table (by suffix: ``.csv``, ``.jsonl``, ``.ndjson``, ``.parquet``; or a directory
    written by ``datasets``' ``save_to_disk``) holds a label column and, for
    ``kind="text"``, a text column (inputs: the texts) or, for ``kind="image"``, an image
    column of encoded images or of paths relative to the table's folder (inputs: bytes or
    resolved paths; a path leading out of the folder, or an absolute one, is refused
    unless ``absolute_paths``). ``kind="image"`` also takes a folder of class folders
    ``path/<label>/<image file>`` (inputs: the file paths). Images are decoded later, by
    the preprocessor, with its pixel cap.

    Raises:
        SupportError: a missing file or folder, an unknown suffix, missing columns, empty
            texts or labels, bad image cells, no class folders or an empty one (the message
            names the file and lines or rows).
    """
    from metafit.data.tables import is_table

    path = Path(path)
    if kind in ("text", "image") and not path.exists():
        raise SupportError(f"{path}: no such file or folder")
    try:
        if kind == "text":
            from metafit.data.text_csv import TextCSV

            if path.is_dir() and not is_table(path):
                raise SupportError(f"{path} is a directory; a text support set is a table "
                                   "(.csv, .jsonl, .parquet or a datasets directory) with "
                                   f"columns {text_column!r} and {label_column!r}")
            data = TextCSV(path, text_column=text_column, label_column=label_column)
            return list(data.texts), list(data.labels)
        if kind == "image":
            if path.is_dir() and not is_table(path):
                from metafit.data.image_folder import list_class_folders

                files, labels = list_class_folders(path)
                return list(files), labels
            from metafit.data.tables import image_rows

            rows = image_rows(path, image_column, label_column, absolute_paths)
            return rows.inputs, rows.labels
    except (DatasetError, FileNotFoundError) as e:
        raise SupportError(str(e)) from e
    raise ValueError(f"kind must be 'text' or 'image', got {kind!r}")
