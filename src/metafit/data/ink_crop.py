"""Crop an image to its ink: the drawing's bounding square, centred, before resizing.

Handwritten characters sit anywhere on their canvas and at any size, so resized whole
to a small input a character covers a fraction of it, and drawers of one character differ
in position and scale as much as characters differ in shape. ``crop="ink"`` maps
every image (training data, support sets and inputs alike) to the square around its ink,
with a margin, before the resize: the network sees each character at the full input
size, and position and scale are normalised away, as the bounding-box normalisation of
MNIST's digits did (LeCun et al. 1998). The aspect ratio is kept (the square is padded
with the background, never stretched).

The ink is every pixel whose grey level differs from the background by more than
:data:`INK_THRESHOLD`, the background being the median grey level of the image's border,
so dark-on-light and light-on-dark drawings are both found. An image without ink is left
as it is. Measured on Omniglot in benchmarks/RESULTS.md ("Cropping to the ink").
"""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
from PIL import Image

__all__ = ["CROPS", "Crop", "INK_MARGIN", "INK_THRESHOLD", "check_crop", "crop_key", "crop_to_ink"]

Crop = Literal["none", "ink"]
#: The values of a recipe's ``image_crop`` (and of a model directory's ``crop``).
CROPS: tuple[str, ...] = get_args(Crop)
#: Grey levels (of 255) by which a pixel must differ from the background to be ink.
INK_THRESHOLD = 64
#: Margin on each side of the ink's bounding square, as a fraction of its side.
INK_MARGIN = 0.1


def check_crop(crop: str) -> None:
    """Raise ``ValueError`` unless ``crop`` is one of :data:`CROPS`."""
    if crop not in CROPS:
        raise ValueError(f"unknown crop {crop!r}; valid: {', '.join(CROPS)}")


def crop_key(crop: str) -> list[str]:
    """The decoded-data cache key's part for ``crop`` (none for ``"none"``, so the caches
    of uncropped data made before the option existed stay valid)."""
    return [] if crop == "none" else [f"crop={crop}"]


def crop_to_ink(img: Image.Image, margin: float = INK_MARGIN,
                threshold: int = INK_THRESHOLD) -> Image.Image:
    """The square of ``img`` around its ink, ``margin`` of its side added on each side.

    Args:
        img: a PIL image in mode ``"L"`` or ``"RGB"`` (``W x H``).
        margin: fraction of the ink's larger side added on each side (>= 0).
        threshold: grey levels from the background (the median of the border pixels)
            above which a pixel counts as ink.

    Returns:
        A new ``S x S`` image of ``img``'s mode, ``S = round(side * (1 + 2 * margin))``
        for the ink's larger side ``side``, centred on the ink's bounding box; parts
        outside ``img`` are filled with the background. ``img`` itself when no pixel is
        ink (a blank image).
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    grey = np.asarray(img.convert("L"), dtype=np.int16)  # [H, W]
    background = int(np.median(_border(grey)))
    ys, xs = np.nonzero(np.abs(grey - background) > threshold)
    if ys.size == 0:
        return img
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    height, width = y1 - y0 + 1, x1 - x0 + 1
    side = round(max(height, width) * (1 + 2 * margin))
    top, left = y0 - (side - height) // 2, x0 - (side - width) // 2  # the ink centred
    fill = _background(img, background)
    canvas = Image.new(img.mode, (side, side), fill)
    box = (max(left, 0), max(top, 0), min(left + side, img.width), min(top + side, img.height))
    canvas.paste(img.crop(box), (box[0] - left, box[1] - top))
    return canvas


def _background(img: Image.Image, level: int) -> int | tuple[int, ...]:
    """The fill for ``img``'s mode (``"L"`` or multi-band): the median border colour."""
    if img.mode == "L":
        return level
    return tuple(int(v) for v in np.median(_border(np.asarray(img)), axis=0))


def _border(a: np.ndarray) -> np.ndarray:
    """The pixels on the edges of ``a`` (``[H, W]`` or ``[H, W, C]``): ``[B]`` or
    ``[B, C]``, corners counted twice."""
    return np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
