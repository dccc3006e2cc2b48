"""Errors of the deployment path: bad inputs (a support set, inputs to predict) and model
directories that are missing, incomplete or corrupt."""

from __future__ import annotations

from metafit.models.tokenizer import ModelDirError

__all__ = ["InputError", "SupportError", "ModelDirError", "ExportError"]


class InputError(ValueError):
    """Inputs that cannot be used: empty texts, images of the wrong size or channels,
    undecodable image bytes. The message names the problem and the offending item."""


class SupportError(InputError):
    """A support set that cannot be adapted to: too few examples, a single class, a label
    that is not among the declared classes, a class count the model cannot take, or any
    :class:`InputError` of its inputs. The message names the label or file."""


class ExportError(ValueError):
    """An export that failed its parity check or that the format cannot represent; no
    output directory is left behind."""
