"""Glyphs: a built-in few-shot image dataset rendered offline (no download), in the spirit of
Omniglot (Lake et al. 2015, "Human-level concept learning through probabilistic program
induction", Science 350(6266)): a character is a code point covered by DejaVu Sans (the
fonts matplotlib ships); its "drawers" are random DejaVu faces, strokes and distortions.

Classes (:func:`glyph_classes`): the letters/digits/symbols of :data:`SCRIPTS`, in that
order and by code point, that DejaVu Sans covers with a glyph of real size (not a dot or a
mark), minus visual duplicates: each candidate is rendered once with DejaVu Sans, centred
on its ink bounding box, box-downsampled to 32x32 and binarised; a candidate within
:data:`DUPLICATE_BITS` differing bits of a class already kept is dropped (Greek Alpha and
Cyrillic A duplicate Latin A). Names look like ``"Greek/U+03B1"``. The list depends only
on the font files and Python's Unicode tables, never on a seed.

Examples: each is the character drawn white on black (strokes bright) with a font drawn
among the DejaVu files that cover it, a stroke width of 0-2 (at 64 px scale), then an affine
map about the ink centre (rotation +-15 degrees, scale 0.8-1.15, shear +-0.2,
translation +-10%) onto a canvas of ``factor * image_size`` pixels, box-downsampled by
``factor`` (antialiasing). Randomness: ``numpy.random.default_rng([seed, class index])``
per class, so a class's examples do not depend on which other classes are built, and the
same seed gives bit-identical data with the same fonts, Pillow and FreeType.

Splits (class level, fixed, independent of ``seed``): classes permuted by
``numpy.random.default_rng(0)``; the first 60% are ``train``, the next 20% ``val``, the
rest ``test`` (:data:`SPLIT_FRACTIONS`). ``num_classes`` keeps the first classes of that
permutation within the split (a spread over scripts), listed in class-list order.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
import unicodedata
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, features

from metafit.data.base import TensorClassDataset
from metafit.io import cached, file_fingerprint

__all__ = ["SCRIPTS", "Glyphs", "font_files", "glyph_classes", "reference_bitmap"]

log = logging.getLogger(__name__)

VERSION = "1"  # bump when the rendering changes: it is part of the cache key
SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)  # train, val, test
GRID = 32  # reference bitmaps are GRID x GRID
DUPLICATE_BITS = 3  # of GRID*GRID: at most this many differing bits = the same glyph
SCRIPTS: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = (
    ("Latin", ((0x41, 0x5A), (0x61, 0x7A))), ("Digit", ((0x30, 0x39),)),
    ("Greek", ((0x391, 0x3A9), (0x3B1, 0x3C9))), ("Cyrillic", ((0x400, 0x45F),)),
    ("Armenian", ((0x531, 0x556), (0x561, 0x586))), ("Hebrew", ((0x5D0, 0x5EA),)),
    ("Arabic", ((0x621, 0x64A),)), ("NKo", ((0x7CA, 0x7EA),)), ("Lao", ((0xE81, 0xEAE),)),
    ("Georgian", ((0x10A0, 0x10C5), (0x10D0, 0x10FA))), ("Tifinagh", ((0x2D30, 0x2D65),)),
    ("Ogham", ((0x1681, 0x169A),)), ("Canadian", ((0x1401, 0x166C),)),
    ("Arrows", ((0x2190, 0x21FF),)), ("Math", ((0x2200, 0x22FF),)),
    ("Geometric", ((0x25A0, 0x25FF),)), ("Symbols", ((0x2600, 0x26FF),)),
    ("Dingbats", ((0x2700, 0x27BF),)),
)  # fmt: skip
# Upright and slanted DejaVu faces; the Serif italics (other letter shapes) are left out.
FONT_NAMES: tuple[str, ...] = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
)  # fmt: skip
_REF_CANVAS = 64  # reference render: font size 48 on a 64 px canvas
_EM = 0.75  # font size / canvas side
_FIT = 0.66  # a glyph's ink is shrunk to at most this fraction of the canvas
_MIN_INK = 0.25  # ... and must span at least this fraction of the font size
_CATEGORIES = ("L", "N", "S")  # letters, digits, symbols (no marks, spaces, punctuation)


@functools.lru_cache(maxsize=1)
def font_files() -> tuple[Path, ...]:
    """The DejaVu font files used (of :data:`FONT_NAMES`, those present); DejaVu Sans,
    the reference font, first. Memoised."""
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    files = tuple(root / name for name in FONT_NAMES if (root / name).is_file())
    if not files or files[0].name != FONT_NAMES[0]:
        raise FileNotFoundError(f"Glyphs: DejaVuSans.ttf not found in {root}")
    return files


@functools.cache
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=1)
def _charmaps() -> tuple[frozenset[int], ...]:
    from matplotlib.ft2font import FT2Font

    return tuple(frozenset(FT2Font(str(f)).get_charmap()) for f in font_files())


def _render(char: str, path: str, size: int, stroke: int = 0) -> Image.Image | None:
    """``char`` white on black, cropped to its ink (mode "L"); ``None`` if it has none."""
    font = _font(path, size)
    left, top, right, bottom = (int(v) for v in font.getbbox(char, stroke_width=stroke))
    if right <= left or bottom <= top:
        return None
    img = Image.new("L", (right - left + 2, bottom - top + 2))
    ImageDraw.Draw(img).text(
        (1 - left, 1 - top), char, font=font, fill=255, stroke_width=stroke, stroke_fill=255
    )
    box = img.getbbox()
    return None if box is None else img.crop(box)


def reference_bitmap(codepoint: int) -> np.ndarray | None:
    """The glyph in DejaVu Sans, centred, fitted and box-downsampled to a binary
    ``[GRID, GRID]`` bool array; ``None`` when it is empty or smaller than a quarter of the
    font size (a dot, an accent)."""
    size = round(_EM * _REF_CANVAS)
    glyph = _render(chr(codepoint), str(font_files()[0]), size)
    if glyph is None or max(glyph.size) < _MIN_INK * size:
        return None
    fit = min(1.0, _FIT * _REF_CANVAS / max(glyph.size))
    if fit < 1.0:
        w, h = (max(1, round(s * fit)) for s in glyph.size)
        glyph = glyph.resize((w, h), Image.Resampling.BOX)
    canvas = Image.new("L", (_REF_CANVAS, _REF_CANVAS))
    canvas.paste(glyph, ((_REF_CANVAS - glyph.width) // 2, (_REF_CANVAS - glyph.height) // 2))
    small = np.asarray(canvas.resize((GRID, GRID), Image.Resampling.BOX))  # [G, G] uint8
    return small >= 96


@functools.lru_cache(maxsize=1)
def glyph_classes() -> tuple[tuple[str, int], ...]:
    """All classes, as ``(script, codepoint)`` in a fixed order (see the module doc).

    Costs about half a second (one small render per candidate, one distance matrix);
    memoised.
    """
    covered = _charmaps()[0]
    found: list[tuple[str, int]] = []
    bitmaps: list[np.ndarray] = []
    for script, ranges in SCRIPTS:
        for lo, hi in ranges:
            for cp in range(lo, hi + 1):
                if cp not in covered or unicodedata.category(chr(cp))[0] not in _CATEGORIES:
                    continue
                ref = reference_bitmap(cp)
                if ref is not None:
                    found.append((script, cp))
                    bitmaps.append(ref.reshape(-1))
    bits = np.stack(bitmaps).astype(np.float32)  # [n, G*G], 0/1
    ones = bits.sum(1)  # [n]
    hamming = ones[:, None] + ones[None, :] - 2 * (bits @ bits.T)  # [n, n], exact integers
    keep = np.zeros(len(found), dtype=bool)
    for i in range(len(found)):  # greedy, in order: the first of a look-alike group stays
        keep[i] = not bool((hamming[i, :i][keep[:i]] <= DUPLICATE_BITS).any())
    return tuple(c for c, k in zip(found, keep, strict=True) if k)


def class_name(script: str, codepoint: int) -> str:
    """``"Greek/U+03B1"``."""
    return f"{script}/U+{codepoint:04X}"


def split_indices(num_all: int, split: str | None) -> np.ndarray:
    """Indices into the full class list of ``split`` (``None``: all), in the fixed
    seed-0 permutation order."""
    perm = np.random.default_rng(0).permutation(num_all)
    if split is None:
        return perm
    n_train = round(SPLIT_FRACTIONS[0] * num_all)
    n_val = round(SPLIT_FRACTIONS[1] * num_all)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val),
              "test": (n_train + n_val, num_all)}  # fmt: skip
    if split not in bounds:
        raise ValueError(f"Glyphs: split must be None, 'train', 'val' or 'test', got {split!r}")
    lo, hi = bounds[split]
    return perm[lo:hi]


def _affine(glyph: Image.Image, side: int, u: np.ndarray) -> Image.Image:
    """Map the ink-cropped ``glyph`` onto a ``side``-pixel canvas, ink centre to canvas
    centre, under the distortion drawn from ``u [5]`` uniforms in [0, 1):
    rotation, scale, shear, translation x, translation y."""
    angle = math.radians(30.0 * u[0] - 15.0)
    scale = (0.8 + 0.35 * u[1]) * min(1.0, _FIT * side / max(glyph.size))
    shear = 0.4 * u[2] - 0.2
    tx, ty = (0.2 * u[3] - 0.1) * side, (0.2 * u[4] - 0.1) * side
    cos, sin = math.cos(angle), math.sin(angle)
    # forward: out = centre + t + R @ [[1, shear], [0, 1]] @ (scale * (in - ink centre))
    a, b, c, d = cos * scale, (cos * shear - sin) * scale, sin * scale, (sin * shear + cos) * scale
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det  # inverse of [[a, b], [c, d]]
    ox, oy = side / 2 + tx, side / 2 + ty
    gx, gy = glyph.width / 2, glyph.height / 2
    data = (ia, ib, gx - ia * ox - ib * oy, ic, id_, gy - ic * ox - id_ * oy)
    return glyph.transform(
        (side, side), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR
    )


def _build(
    class_ids: list[int], image_size: int, examples_per_class: int, seed: int
) -> dict[str, torch.Tensor]:
    """Render ``examples_per_class`` examples of each class of ``class_ids`` (indices of
    :func:`glyph_classes`): ``{"data": uint8 [C*E, 1, S, S], "targets": long [C*E]}``."""
    everything = glyph_classes()
    fonts = [str(f) for f in font_files()]
    charmaps = _charmaps()
    factor = max(2, math.ceil(64 / image_size))
    side = factor * image_size
    size = round(_EM * side)
    strokes = [round(k * size / 64) for k in range(3)]
    data = np.zeros((len(class_ids), examples_per_class, 1, image_size, image_size), np.uint8)
    for j, c in enumerate(class_ids):
        cp = everything[c][1]
        ch = chr(cp)
        usable = [i for i, cm in enumerate(charmaps) if cp in cm]  # includes 0, the ref
        u = np.random.default_rng([seed, c]).random((examples_per_class, 7))  # [E, 7]
        renders: dict[tuple[int, int], Image.Image | None] = {}
        for e in range(examples_per_class):
            key = (usable[int(u[e, 0] * len(usable))], strokes[int(u[e, 1] * 3)])
            if key not in renders:
                renders[key] = _render(ch, fonts[key[0]], size, key[1])
            glyph = renders[key] if renders[key] is not None else _render(ch, fonts[0], size)
            if glyph is None:
                raise RuntimeError(f"Glyphs: {class_name(*everything[c])} renders empty")
            img = _affine(glyph, side, u[e, 2:]).reduce(factor)
            data[j, e, 0] = np.asarray(img)
    targets = torch.arange(len(class_ids)).repeat_interleave(examples_per_class)
    return {"data": torch.from_numpy(data).flatten(0, 1), "targets": targets}


class Glyphs(TensorClassDataset):
    """Rendered characters of many scripts, ``examples_per_class`` "drawers" each.

    Args:
        image_size: side of the square images.
        num_classes: keep this many classes of the split (default: all).
        examples_per_class: examples rendered per class (Omniglot has 20).
        seed: seeds the distortions (not the class list or the split).
        split: ``None`` (all classes), ``"train"``, ``"val"`` or ``"test"``.
        cache: keep the rendered tensor in :func:`metafit.io.cached`.

    Attributes:
        data: ``uint8 [C*E, 1, image_size, image_size]``, strokes bright on 0.
        classes: names ``"Script/U+XXXX"``; ``scripts``, ``codepoints``: per class.
    """

    def __init__(
        self,
        image_size: int = 28,
        num_classes: int | None = None,
        examples_per_class: int = 20,
        seed: int = 0,
        split: str | None = None,
        cache: bool = True,
    ) -> None:
        for name, value in (("image_size", image_size), ("examples_per_class", examples_per_class)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Glyphs: {name} must be a positive integer, got {value!r}")
        everything = glyph_classes()
        ids = split_indices(len(everything), split)
        if num_classes is not None:
            if not isinstance(num_classes, int) or not 0 < num_classes <= len(ids):
                raise ValueError(
                    f"Glyphs: num_classes must be an integer in 1..{len(ids)} for "
                    f"split={split!r}, got {num_classes!r}"
                )
            ids = ids[:num_classes]
        class_ids = sorted(int(i) for i in ids)
        names = [class_name(*everything[i]) for i in class_ids]
        key = [
            VERSION, f"pillow={Image.__version__}",
            f"freetype={features.version('freetype2')}",
            *(file_fingerprint(f) for f in font_files()),
            f"image_size={image_size}", f"examples={examples_per_class}", f"seed={seed}",
            hashlib.sha1("\n".join(names).encode()).hexdigest(),
        ]  # fmt: skip
        start = time.perf_counter()
        built = cached(
            "glyphs", key,
            lambda: _build(class_ids, image_size, examples_per_class, seed), enabled=cache,
        )  # fmt: skip
        log.info(
            "Glyphs: %d classes x %d examples at %dpx in %.2f s",
            len(names), examples_per_class, image_size, time.perf_counter() - start,
        )  # fmt: skip
        super().__init__(built["data"], built["targets"], names)
        self.scripts: list[str] = [everything[i][0] for i in class_ids]
        self.codepoints: list[int] = [everything[i][1] for i in class_ids]
        self.split = split
