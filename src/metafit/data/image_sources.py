"""The image cell of a table row as something to decode: encoded bytes, or a path checked
to be safe to open.

A table's image column holds encoded images (bytes; a Hugging Face image's ``bytes``) or
paths (a string; a Hugging Face image's ``path`` when it has no bytes). A table may come
from a stranger, so a path is untrusted: relative to the folder holding the table (a
``datasets`` directory: that directory), it must stay inside that folder once ``..`` and
links are resolved, and an absolute path is refused, unless ``absolute_paths`` says the
table is trusted to name any file. Either way the path must name a regular file (not a
device or a pipe, which could block or never end). Without these checks a table could
make metafit read any file it can, e.g. to learn from errors which files exist, or to
train on and so leak another user's images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["ImageSource", "image_source"]

ImageSource = Path | bytes

OUTSIDE = "an image path leading out of the table's folder"
ABSOLUTE = "an absolute image path"
NOT_A_FILE = "an image path that is not a file"
UNUSABLE = "an image path the system cannot use"
EMPTY = "an empty image cell"
WRONG = "an image cell that is neither a path nor encoded bytes"


def image_source(cell: Any, base: Path, absolute_paths: bool = False
                 ) -> tuple[ImageSource | None, str | None]:
    """``(source, None)`` for a usable cell, else ``(None, problem)``.

    Args:
        cell: ``bytes``, a path string or a ``{"bytes", "path"}`` dict.
        base: the folder relative paths are taken from, already resolved.
        absolute_paths: accept absolute paths and relative ones leading out of ``base``.

    Returns:
        the bytes, or the resolved path of the file; or the problem, one of a few fixed
        phrases (so that an error can group the rows by problem).
    """
    if isinstance(cell, dict):
        data, path = cell.get("bytes"), cell.get("path")
        cell = data if data else path
    if isinstance(cell, bytes | bytearray):
        return (bytes(cell), None) if cell else (None, EMPTY)
    if not isinstance(cell, str):
        return None, WRONG
    text = cell.strip()
    if not text:
        return None, EMPTY
    if "\x00" in text:
        return None, UNUSABLE
    given = Path(text)
    if given.is_absolute() and not absolute_paths:
        return None, ABSOLUTE
    try:
        real = (base / given).resolve()
        if not absolute_paths and not real.is_relative_to(base):
            return None, OUTSIDE  # said before looking: whether it exists stays unknown
        if not real.is_file():
            return None, NOT_A_FILE
    except (OSError, RuntimeError, ValueError):  # too long, a link loop, ...
        return None, UNUSABLE
    return real, None
