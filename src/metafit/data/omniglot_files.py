"""Reading Omniglot's files: the official zips (or their extracted folders) found in a
directory, listed and decoded into one uint8 tensor (:class:`metafit.data.omniglot.Omniglot`
caches and splits it).

Layout ``<set>/<Alphabet>/characterNN/<drawer>.png``; images are keyed by (alphabet,
character, file name), so an image in two sources is decoded once.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metafit.data.errors import DatasetError
from metafit.data.image_folder import decode_image, fingerprint_files
from metafit.io import file_fingerprint, read_bounded

#: Largest Omniglot image file read (the dataset's PNGs take a few KB each).
MAX_FILE_BYTES = 16 * 2**20

__all__ = ["OMNIGLOT_SETS", "decode_sources", "drawer_of", "find_sources", "source_key"]

log = logging.getLogger("metafit.data.omniglot")  # under the dataset's name

OMNIGLOT_SETS: tuple[str, ...] = tuple(
    f"images_{s}" for s in ("background", "evaluation", "background_small1", "background_small2")
)

Key = tuple[str, str, str]  # (alphabet, character, file name)


def find_sources(root: Path) -> list[tuple[str, Path]]:
    found = []
    for name in OMNIGLOT_SETS:
        zip_path, folder = root / f"{name}.zip", root / name
        if zip_path.is_file():
            found.append((name, zip_path))
            if folder.is_dir():
                log.info("reading %s and skipping the folder %s", zip_path, folder)
        elif folder.is_dir():
            nested = folder / name  # a zip extracted into a folder of its own name
            found.append((name, nested if nested.is_dir() else folder))
    if not found:
        looked = ", ".join(f"{n}.zip or {n}/" for n in OMNIGLOT_SETS)
        raise FileNotFoundError(f"no Omniglot data in {root}: looked for {looked}")
    return found


def drawer_of(file: str) -> int:
    """The drawer of an Omniglot file ``NNNN_DD.png`` (character ``NNNN`` drawn by the
    ``DD``-th of its alphabet's 20 drawers) as ``DD - 1``; -1 for another name."""
    found = re.fullmatch(r"\d+_(\d+)\.png", file, flags=re.IGNORECASE)
    return int(found.group(1)) - 1 if found else -1


def _parse(parts: list[str]) -> Key | None:
    """(alphabet, character, file) of a path ``[set?,] alphabet/character/file.png``."""
    if len(parts) < 3 or any(p.startswith((".", "__MACOSX")) for p in parts):
        return None
    alphabet, character, file = parts[-3:]
    return (alphabet, character, file) if file.lower().endswith(".png") else None


def _list_zip(path: Path) -> dict[Key, str]:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise DatasetError(f"cannot open Omniglot zip {path}: {e}") from e
    keys = {n: _parse(n.split("/")[1:]) if n.count("/") == 3 else None for n in names}
    return {key: name for name, key in keys.items() if key is not None}


def _list_folder(path: Path) -> dict[Key, str]:
    members = {}
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(path).parts
        if len(rel) != 2:
            continue
        for f in filenames:
            key = _parse([*rel, f])
            if key is not None and (Path(dirpath) / f).is_file() \
                    and not (Path(dirpath) / f).is_symlink():  # no FIFO, device or link
                members[key] = str(Path(dirpath) / f)
    return members


def _zip_member(z: zipfile.ZipFile, member: str) -> bytes:
    """The bytes of ``member``, refused before it is inflated when it would take over
    :data:`MAX_FILE_BYTES` (a decompression bomb)."""
    size = z.getinfo(member).file_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{size} bytes uncompressed, over the limit of {MAX_FILE_BYTES}")
    with z.open(member) as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:  # the header understated it
        raise ValueError(f"over the limit of {MAX_FILE_BYTES} bytes uncompressed")
    return data


def source_key(path: Path) -> str:
    if path.is_file():
        return file_fingerprint(path)
    return fingerprint_files(sorted(Path(p) for p in _list_folder(path).values()))


def decode_sources(sources: list[tuple[str, Path]], image_size: int,
                   crop: str = "none") -> dict[str, Any]:
    """Decode every (deduplicated) image of ``sources`` (cropped as ``crop`` says,
    :func:`~metafit.data.image_folder.decode_image`): ``data uint8 [N, 1, s, s]``,
    ``targets [N]`` (character index), ``drawers [N]`` (long: :func:`drawer_of` each
    file), ``characters`` names, ``origins`` (the sets each character appears in,
    ``|``-joined)."""
    where: dict[Key, tuple[Path, str]] = {}
    origins: dict[tuple[str, str], set[str]] = {}
    for set_name, path in sources:
        members = _list_zip(path) if path.is_file() else _list_folder(path)
        log.info("%s: %d images", path, len(members))
        for key, member in members.items():
            where.setdefault(key, (path, member))
            origins.setdefault(key[:2], set()).add(set_name)
    if not where:
        raise DatasetError(
            "no Omniglot images (<set>/<Alphabet>/<character>/<file>.png) in "
            + ", ".join(str(p) for _, p in sources)
        )
    keys = sorted(where)
    characters = sorted(origins)
    char_index = {c: i for i, c in enumerate(characters)}
    data = np.empty((len(keys), image_size, image_size), dtype=np.uint8)
    with ExitStack() as stack:
        zips = {p: stack.enter_context(zipfile.ZipFile(p)) for _, p in sources if p.is_file()}
        for i, key in enumerate(keys):
            path, member = where[key]
            try:
                raw = (_zip_member(zips[path], member) if path in zips
                       else read_bounded(member, MAX_FILE_BYTES))
                data[i] = decode_image(raw, image_size, "L", crop=crop)  # [s, s]
            except Exception as e:  # any read/decode failure is a dataset error
                name = f"{member} in {path}" if path in zips else member
                raise DatasetError(f"cannot decode Omniglot image {name}: {e}") from e
    targets = [char_index[k[:2]] for k in keys]
    return {
        "data": torch.from_numpy(data).unsqueeze(1),  # [N, 1, s, s]
        "targets": torch.tensor(targets, dtype=torch.long),  # [N]
        "drawers": torch.tensor([drawer_of(k[2]) for k in keys], dtype=torch.long),  # [N]
        "characters": [f"{a}/{c}" for a, c in characters],
        "origins": ["|".join(sorted(origins[c])) for c in characters],
    }
