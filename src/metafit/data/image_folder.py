"""A class-per-folder image dataset (the layout of torchvision's ``ImageFolder``).

``root/<class name>/<image file>``: each sub-folder of ``root`` is a class (classes are the
sorted folder names), each image directly inside it an example. Every image is decoded
once with PIL, converted to grayscale (``"L"``, ``channels=1``) or ``"RGB"``
(``channels=3``), resized to ``image_size x image_size`` and stored as one uint8 tensor
``[num_examples, channels, image_size, image_size]``; the decoded tensor is cached on disk
(:func:`metafit.io.cached`), keyed on every source file's path, size and mtime.
Hidden files and folders (names starting with ``.``) are ignored, as are files whose
extension is not in ``extensions``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from metafit.data.base import TensorClassDataset
from metafit.data.errors import DatasetError
from metafit.data.ink_crop import check_crop, crop_key, crop_to_ink
from metafit.io import cached, file_fingerprint

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "decode_image", "fingerprint_files", "image_mode",
           "list_class_folders", "MAX_IMAGE_PIXELS", "ImageTooLarge", "check_pixels",
           "image_dimensions"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)

_RESAMPLE = Image.Resampling.LANCZOS


#: Default cap on an image's pixels (width x height) in :func:`decode_image`: PIL's own
#: decompression-bomb threshold (about 89 megapixels), checked before decoding.
MAX_IMAGE_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 89_478_485)


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than allowed (refused undecoded)."""


#: The file formats decoded (docs/data.md): whatever a file's name, PIL's other readers
#: (ICO, TGA, SGI, PCX, JPEG 2000, ...) are not used on data from others.
IMAGE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")


def _upright_on_white(img: Image.Image) -> Image.Image:
    """``img`` as a viewer shows it: turned as its EXIF orientation says (phone photos),
    and with any transparency composited onto white (a drawing on a transparent
    background is otherwise black on black once the alpha channel is dropped)."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img


def image_dimensions(source: bytes | Path, formats: Sequence[str] | None = None
                     ) -> tuple[int, int]:
    """``(width, height)`` from an image file's header, without decoding its pixels.

    ``formats``: the PIL format names accepted (e.g. ``("PNG", "JPEG")``; None: any).

    Raises:
        ValueError: not an image of an accepted format (the message carries no object
            repr); :class:`ImageTooLarge` past PIL's own bomb limit.
    """
    with _open(source, formats) as file:
        return file.size


@contextmanager
def _open(source: bytes | Path, formats: Sequence[str] | None) -> Iterator[Image.Image]:
    """``Image.open`` (lazy: header only) with messages fit for a client: PIL's own name the
    stream object (``<_io.BytesIO object at 0x...>``)."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        file = Image.open(stream, formats=None if formats is None else list(formats))
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"more than {2 * MAX_IMAGE_PIXELS} pixels (PIL refuses it as a "
                            "decompression bomb)") from e
    except UnidentifiedImageError as e:
        what = "an image file PIL can read" if formats is None else \
            f"a {' or '.join(formats)} file"
        raise ValueError(f"not {what}") from e
    with file:
        yield file


def check_pixels(size: tuple[int, int], max_pixels: int | None) -> None:
    """Refuse an image of ``size`` (width, height) over ``max_pixels`` (None: no cap).

    Raises:
        ImageTooLarge: ``"WxH pixels, over the limit of N"``.
    """
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} pixels, over the limit of {max_pixels}")


def decode_image(source: bytes | Path | Image.Image, image_size: int, mode: str = "L",
                 max_pixels: int | None = MAX_IMAGE_PIXELS, crop: str = "none") -> np.ndarray:
    """Decode one image file (raw bytes or a path; or take an opened PIL image), convert it
    to ``mode``, crop it (``crop="ink"``: the square around its drawing,
    :func:`metafit.data.ink_crop.crop_to_ink`; ``"none"``: the whole image) and resize it.

    The size in the file's header is checked against ``max_pixels`` (width x height;
    None: PIL's own limit only) before any pixel is decoded, so a small file declaring a
    huge image (a pixel bomb) costs nothing.

    Returns:
        ``uint8 [image_size, image_size]`` for ``mode="L"``, ``[image_size, image_size, 3]``
        for ``"RGB"``. Resizing uses PIL's Lanczos filter (as in Finn et al. 2017's MAML
        Omniglot pipeline).

    Raises:
        ImageTooLarge: more pixels than ``max_pixels`` (or than PIL's bomb limit).
        ValueError: not an image PIL can identify, or an unknown ``crop``; else whatever
            PIL raises on an unreadable image (``OSError`` for truncated data, ...);
            callers wrap it in :class:`DatasetError`.
    """
    check_crop(crop)
    if isinstance(source, Image.Image):
        check_pixels(source.size, max_pixels)
        img = _upright_on_white(source).convert(mode)
    else:
        with _open(source, IMAGE_FORMATS) as file:
            check_pixels(file.size, max_pixels)
            file.load()  # decode now, so truncated data fails here and not later
            img = _upright_on_white(file).convert(mode)
    if crop == "ink":
        img = crop_to_ink(img)
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), _RESAMPLE)
    return np.asarray(img, dtype=np.uint8)


def fingerprint_files(paths: Sequence[Path]) -> str:
    """One short key for many files: sha1 over each file's :func:`file_fingerprint`."""
    h = hashlib.sha1()
    for p in paths:
        h.update(file_fingerprint(p).encode())
        h.update(b"\n")
    return f"{len(paths)}:{h.hexdigest()}"


def image_mode(channels: int, image_size: int, source: Path) -> str:
    """The PIL mode of ``channels`` (``"L"`` or ``"RGB"``), after checking both settings.

    Raises:
        DatasetError: ``channels`` not 1 or 3 (naming ``source``).
        ValueError: ``image_size`` not a positive integer.
    """
    if channels not in (1, 3):
        raise DatasetError(f"channels must be 1 or 3, got {channels!r} (for {source})")
    if not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return "L" if channels == 1 else "RGB"


def _visible(name: str) -> bool:
    return not name.startswith(".")


def list_class_folders(
    root: str | os.PathLike[str], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> tuple[list[Path], list[str]]:
    """The image files of ``root/<class>/<image>`` and the class (folder name) of each,
    classes in sorted order and files sorted within a class.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        DatasetError: no class folders, or a class folder without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder root {root} is not a directory")
    exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    class_dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and _visible(d.name)), key=lambda d: d.name
    )
    if not class_dirs:
        raise DatasetError(f"no class folders in {root} (expected root/<class>/<image>)")
    files: list[Path] = []
    labels: list[str] = []
    for d in class_dirs:
        images = sorted(
            f for f in d.iterdir() if f.is_file() and _visible(f.name) and f.suffix.lower() in exts
        )
        if not images:
            raise DatasetError(f"class folder {d} holds no images (extensions {', '.join(exts)})")
        files += images
        labels += [d.name] * len(images)
    return files, labels


class ImageFolder(TensorClassDataset):
    """Images in one sub-folder per class.

    Args:
        root: the folder holding one sub-folder per class.
        image_size: side of the square images after resizing.
        channels: 1 (grayscale, PIL mode ``"L"``) or 3 (``"RGB"``).
        invert: store ``255 - x`` (dark strokes on a white background become bright
            strokes on zero, as the Omniglot-style models expect).
        cache: read/write the decoded tensor from/to the on-disk cache.
        extensions: file name endings (case-insensitive) that count as images.
        crop: ``"ink"``: each image cropped to the square around its drawing before the
            resize (:mod:`metafit.data.ink_crop`); ``"none"``: the whole image.

    Attributes:
        data: ``uint8 [num_examples, channels, image_size, image_size]``, grouped by class.
        classes: the sorted class folder names.
        files: the source file of each example, in the order of ``data``.

    Raises:
        FileNotFoundError: ``root`` is not a directory.
        DatasetError: ``channels`` not in (1, 3); no class folders; a class folder without
            images; an image PIL cannot decode (the message names the file).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        image_size: int = 28,
        channels: int = 1,
        invert: bool = False,
        cache: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        crop: str = "none",
    ) -> None:
        root = Path(root)
        mode = image_mode(channels, image_size, root)
        check_crop(crop)
        files, class_of = list_class_folders(root, extensions)
        names = sorted(set(class_of))
        index = {c: i for i, c in enumerate(names)}
        targets = [index[c] for c in class_of]

        def build() -> dict[str, torch.Tensor]:
            log.info("decoding %d images from %s", len(files), root)
            data = np.empty((len(files), image_size, image_size, channels), dtype=np.uint8)
            for i, f in enumerate(files):
                try:
                    img = decode_image(f, image_size, mode, crop=crop)  # [H, W(, 3)]
                except Exception as e:  # any decoder failure is a dataset error
                    raise DatasetError(f"cannot decode image {f}: {e}") from e
                data[i] = img.reshape(image_size, image_size, channels)
            return {"data": torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()}

        key = [str(root.resolve()), fingerprint_files(files), f"size={image_size}", mode,
               *crop_key(crop)]
        data = cached("image_folder", key, build, enabled=cache)["data"]  # [N, C, H, W]
        self.root = root
        self.files = files
        super().__init__(
            data,
            torch.tensor(targets, dtype=torch.long),
            names,
            invert=invert,
        )
