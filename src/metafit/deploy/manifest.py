"""The manifest of a model directory, checked as untrusted input.

``manifest.json`` names the format and its version, what the directory holds
(``content``: ``"adapted"`` or ``"onnx"``), the library version, and the size and sha256 of
every file. :func:`check_manifest` checks every field before any listed file is opened, and
:func:`check_file_name` every file name, on read and on write: a relative, normalised path
inside the directory (no ``..``, no absolute path, no backslash, no NUL) of a kind the
format holds. A malformed manifest is a :class:`ModelDirError` naming the manifest and the
entry, never a traceback.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from metafit._version import __version__
from metafit.deploy.errors import ModelDirError

__all__ = ["FORMAT", "FORMAT_VERSION", "READABLE_VERSIONS", "MANIFEST", "ALLOWED",
           "check_file_name", "check_manifest", "sha256"]

FORMAT = "metafit-model"
#: 2: weights and support set as safetensors; 1 (read only): as torch.save files.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
MAX_FILES = 256
#: The files each kind of model directory may hold, beside ``encoder/`` files.
ALLOWED = {
    ("adapted", 1): frozenset({"model.json", "recipe.yaml", "weights.pt", "support.pt"}),
    ("adapted", 2): frozenset({"model.json", "recipe.yaml", "weights.safetensors",
                               "support.safetensors"}),
    ("onnx", 1): frozenset({"model.json", "export.json", "model.onnx"}),
    ("onnx", 2): frozenset({"model.json", "export.json", "model.onnx"}),
}
#: A text encoder's config and tokenizer files, one level below the root.
ENCODER_FILE = re.compile(r"encoder/[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\.(json|txt|model)")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_file_name(rel: object, content: str, version: int, where: str) -> str:
    """``rel`` if it may be a file of a ``content`` model directory of format ``version``.

    Raises:
        ModelDirError: not a relative, normalised path inside the directory, or not a kind
            of file the format holds (the message names ``where`` and ``rel``).
    """
    if not isinstance(rel, str) or not rel:
        raise ModelDirError(f"{where}: a file name must be a non-empty string, got {rel!r}")
    parts = rel.split("/")
    if (rel.startswith("/") or "\\" in rel or "\x00" in rel
            or any(p in ("", ".", "..") for p in parts)):
        raise ModelDirError(f"{where}: file {rel!r} is not a relative, normalised path "
                            "inside the model directory")
    allowed = ALLOWED.get((content, version), frozenset())
    if rel not in allowed and not ENCODER_FILE.fullmatch(rel):
        raise ModelDirError(f"{where}: file {rel!r} is not a file a {content!r} model "
                            f"directory holds ({', '.join(sorted(allowed))}, "
                            "encoder/<name>.json|.txt|.model)")
    return rel


def check_manifest(manifest: object, where: str, content: str | None = None
                   ) -> dict[str, dict[str, Any]]:
    """The ``files`` of a parsed manifest, every field checked (module docstring).

    Raises:
        ModelDirError: another format or an unknown version, ``content`` differs, or a
            malformed field or file entry (named).
    """
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelDirError(f"{where}: not a metafit model manifest")
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise ModelDirError(f"{where}: model format version {version!r} is not supported by "
                            f"metafit {__version__} (reads versions "
                            f"{', '.join(map(str, READABLE_VERSIONS))})")
    kind = manifest.get("content")
    if not isinstance(kind, str) or (kind, version) not in ALLOWED:
        raise ModelDirError(f"{where}: unknown content {kind!r}")
    if content is not None and kind != content:
        raise ModelDirError(f"{where}: holds a {kind!r} model, not {content!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files or len(files) > MAX_FILES:
        raise ModelDirError(f"{where}: 'files' must be an object of 1 to {MAX_FILES} entries "
                            "(file name -> {bytes, sha256})")
    for rel, entry in files.items():
        check_file_name(rel, kind, version, where)
        if not isinstance(entry, dict):
            raise ModelDirError(f"{where}: the entry of {rel!r} is not an object")
        size, digest = entry.get("bytes"), entry.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ModelDirError(f"{where}: {rel!r} has no valid 'bytes' (a size >= 0)")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ModelDirError(f"{where}: {rel!r} has no valid 'sha256' (64 hex digits)")
    return files
