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

__all__ = ["CROPS", "Crop", "INK_MARGIN", "INK_THRESHOLD", "MAX_CROP_SIDE", "check_crop",
           "crop_key", "crop_to_ink"]

Crop = Literal["none", "ink"]
#: The values of a recipe's ``image_crop`` (and of a model directory's ``crop``).
CROPS: tuple[str, ...] = get_args(Crop)
#: Grey levels (of 255) by which a pixel must differ from the background to be ink.
INK_THRESHOLD = 64
#: Margin on each side of the ink's bounding square, as a fraction of its side.
INK_MARGIN = 0.1
#: Largest side of the cropped square (before the resize to the model's input): a thin
#: strip's square would otherwise be far larger than the image itself.
MAX_CROP_SIDE = 4096


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
    grey = np.asarray(img.convert("L"))  # uint8 [H, W]
    background = int(np.median(_border(grey)))
    # One byte a pixel: no signed copy, no index arrays (a 4096 x 4096 input took 11x
    # its decoded size with them).
    ink = (grey > background + threshold) if background + threshold < 255 else \
        np.zeros(grey.shape, bool)
    if background - threshold > 0:
        ink |= grey < background - threshold
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        return img
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    height, width = y1 - y0 + 1, x1 - x0 + 1
    side = round(max(height, width) * (1 + 2 * margin))
    top, left = y0 - (side - height) // 2, x0 - (side - width) // 2  # the ink centred
    fill = _background(img, background)
    box = (max(left, 0), max(top, 0), min(left + side, img.width), min(top + side, img.height))
    part, at = img.crop(box), (box[0] - left, box[1] - top)
    if side > MAX_CROP_SIDE:
        # A 1 x N strip with ink at both ends would make an (1.2 N)^2 canvas: scale the
        # part down first, so that the square is at most MAX_CROP_SIDE on a side.
        scale = MAX_CROP_SIDE / side
        part = part.resize((max(1, round(part.width * scale)), max(1, round(part.height * scale))),
                           Image.Resampling.BOX)
        at, side = (round(at[0] * scale), round(at[1] * scale)), MAX_CROP_SIDE
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(part, at)
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
