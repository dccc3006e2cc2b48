"""Errors raised while reading dataset files."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset file is unreadable or malformed: a corrupt archive, a truncated image, a bad
    IDX header, an empty class folder. The message names the offending file (and, inside
    an archive, the member); the original exception is chained as ``__cause__``."""
