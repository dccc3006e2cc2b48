"""Recipes as files: YAML files shipped in ``metafit/recipes`` (or anywhere), and
``key=value`` overrides from the command line, validated into a
:class:`~metafit.config.schema.Recipe`.

A YAML recipe may start with ``base: OTHER`` to inherit every key of another recipe (a
shipped name or a path relative to the file) and override some. Unknown keys are errors
naming the key and the nearest valid ones.

A relative ``data_root`` is made absolute where it is written (:func:`resolve_data_root`):
in a recipe file, against that file's folder; in a shipped recipe, against
``$METAFIT_DATA`` when it is set, else against the current directory; on the command
line, against the current directory. A loaded recipe, and so every ``config.yaml`` and
``best.yaml`` written from one, names its data by an absolute path that reads the same
from any folder.
"""

from __future__ import annotations

import difflib
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from metafit.config.files import (
    RecipeError,
    parse_yaml_mapping,
    read_yaml_mapping,
    short_repr,
)

# Recipe, make_recipe and recipe_to_yaml are also importable from
# here, their home before the schema moved to metafit.config.schema.
from metafit.config.schema import (
    Recipe,
    check_keys,
    check_scope,
    make_recipe,
    recipe_to_yaml,
)

__all__ = [
    "Recipe",
    "DATA_ENV",
    "RecipeError",
    "list_recipes",
    "load_recipe",
    "make_recipe",
    "parse_overrides",
    "parse_yaml_mapping",
    "read_yaml_mapping",
    "recipe_to_yaml",
    "resolve_data_root",
    "written_as",
]

#: The environment variable naming the folder that holds the shipped recipes' data
#: (``omniglot/``, ``banking77/``).
DATA_ENV = "METAFIT_DATA"


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["inner_steps=5", "data_root=/d"]`` -> ``{"inner_steps": 5, "data_root": "/d"}``.

    Values are parsed as YAML scalars (``true``, ``null``, ``5``, ``0.1``; ``1e-3`` is
    read as a string and converted by the field's type).
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"override {pair!r} is not of the form key=value")
        try:
            pair.encode("utf-8")
        except UnicodeEncodeError:  # undecodable bytes on the command line
            raise RecipeError(f"override {pair!r} is not valid text (bytes that are not "
                              "UTF-8?)") from None
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except (yaml.YAMLError, RecursionError):
            value = raw
        out[key] = value
    check_keys(out, "the command-line overrides")
    return out


def _recipe_dir() -> Path:
    return Path(str(resources.files("metafit") / "recipes"))


def list_recipes() -> list[str]:
    """Names of the recipes shipped with metafit, sorted."""
    return sorted(p.stem for p in _recipe_dir().glob("*.yaml") if not p.stem.startswith("_"))


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the OS rejects (too long, a NUL byte)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _resolve(name_or_path: str, relative_to: Path | None = None) -> Path:
    candidates = [Path(name_or_path)]
    if relative_to is not None:
        candidates.insert(0, relative_to / name_or_path)
    candidates.append(_recipe_dir() / f"{name_or_path}.yaml")
    for path in candidates:
        if _is_file(path):
            return path
    names = list_recipes() + [p.stem for p in _recipe_dir().glob("_*.yaml")]
    close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `metafit recipes`"
    shown = name_or_path if len(name_or_path) <= 300 else name_or_path[:300] + "..."
    raise RecipeError(f"no recipe named or at {shown!r}{hint}")  # repr: one line


def _is_shipped(path: Path) -> bool:
    try:
        return path.resolve().parent == _recipe_dir().resolve()
    except (OSError, RuntimeError):
        return False


def resolve_data_root(data_root: Any, path: Path | None) -> Any:
    """``data_root`` as written in the recipe file ``path`` (None: on the command line),
    made absolute where it is a relative path: against ``path``'s folder; for a shipped
    recipe against ``$METAFIT_DATA`` when it is set; else against the current directory.
    Absolute paths, ``~`` paths and values that are not strings are returned as they are
    (``~`` is expanded when the data are read)."""
    if not isinstance(data_root, str) or not data_root.strip():
        return data_root
    given = Path(data_root)
    if given.is_absolute() or data_root.startswith("~"):
        return data_root
    folder: str | Path = "."
    where = "on the command line"
    if path is not None and _is_shipped(path):
        env = os.environ.get(DATA_ENV)
        folder = Path(env or ".").expanduser()
        where = (f"in the shipped recipe {path.stem}, with ${DATA_ENV}={env}" if env else
                 f"in the shipped recipe {path.stem}, ${DATA_ENV} not set")
    elif path is not None:
        folder = path.parent
        where = f"in {path}"
    resolved = str(Path(os.path.abspath(folder)) / given)
    _WRITTEN[resolved] = f"written as '{data_root}' {where}"
    while len(_WRITTEN) > 256:  # a long-lived process loads many recipes: keep the last
        del _WRITTEN[next(iter(_WRITTEN))]
    return resolved


#: How a resolved relative data_root was written (value and where), by the absolute
#: path it became: :func:`written_as`.
_WRITTEN: dict[str, str] = {}


def written_as(data_root: str) -> str | None:
    """``"written as 'omniglot' in the shipped recipe X, $METAFIT_DATA not set"`` for a
    ``data_root`` this process resolved from a relative path (:func:`resolve_data_root`),
    else None: for errors about a data root that does not exist."""
    return _WRITTEN.get(data_root)


def _read(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The keys of the recipe file ``path`` merged over those of its ``base`` chain;
    ``chain``: the files that inherit from it, the first being the one asked for."""
    where = str(path) if not chain else f"{path} (the base of {chain[-1]})"
    try:
        real = path.resolve()
        looped = any(real == p.resolve() for p in chain)
    except (OSError, RuntimeError):  # a symlink loop
        raise RecipeError(f"cannot read recipe {where}: a symlink loop") from None
    if looped:
        raise RecipeError(f"recipe {where} inherits from itself through 'base'")
    raw = read_yaml_mapping(path, "recipe", where)
    base = raw.pop("base", None)
    raw.pop("metafit_version", None)  # written into a run's resolved config
    check_keys(raw, where)
    if "data_root" in raw:
        raw["data_root"] = resolve_data_root(raw["data_root"], path)
    if base is None:
        return raw
    if isinstance(base, (list, dict, bool)):
        raise RecipeError(f"recipe {where}: base must be a recipe name or path, not "
                          f"{short_repr(base)}")
    try:
        parent_path = _resolve(str(base), path.parent)
    except RecipeError as e:
        raise RecipeError(f"recipe {where}: base: {e}") from None
    parent = _read(parent_path, (*chain, path))
    return {**parent, **raw}


#: Tracking URI schemes a recipe file may name itself: stores on this machine.
LOCAL_STORES = ("sqlite", "file", "")


def _check_local_store(uri: object, path: Path) -> None:
    """Refuse an ``mlflow_uri`` in a recipe file that names a server: a recipe may come
    from someone else, and training it would send the run (its parameters, metrics and
    files) wherever it says. A server is named by the person running metafit
    (``mlflow_uri=URI`` on the command line, or ``MLFLOW_TRACKING_URI``)."""
    if not isinstance(uri, str):
        return
    scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
    if scheme not in LOCAL_STORES and len(scheme) > 1:  # one letter: a Windows drive
        raise RecipeError(f"{path}: mlflow_uri {uri!r} names a server; a recipe file may "
                          "name a local store only (sqlite:///..., a path). To log to a "
                          f"server, give it yourself: mlflow_uri={uri} on the command "
                          "line, or MLFLOW_TRACKING_URI")


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | list[str] | None = None
                ) -> Recipe:
    """Load a shipped recipe by name, or a YAML file by path, and apply overrides.

    A relative ``data_root`` is made absolute against the folder of the file that sets it
    (for a shipped recipe ``$METAFIT_DATA``, when set), or against the current directory
    (a shipped recipe without ``$METAFIT_DATA``; ``overrides``).

    Raises:
        RecipeError: unknown recipe, unknown key (with the nearest valid keys), a key that
            does not apply to the dataset (a meta-RL key in a supervised recipe or the
            reverse, :func:`~metafit.config.schema.check_scope`), bad YAML, or a value
            that fails validation (naming the key).
    """
    path = _resolve(str(name_or_path))
    values = _read(path)
    if "name" not in values:  # the file's name, made a folder name (schema's `name`)
        values["name"] = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip("._-")[:128] \
            or "custom"
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    if overrides:
        check_keys(overrides, "the overrides")
    dataset = (overrides or {}).get("dataset", values.get("dataset"))
    check_scope(overrides or {}, "the overrides", dataset)
    check_scope(values, str(path), dataset)
    if "mlflow_uri" not in (overrides or {}):
        _check_local_store(values.get("mlflow_uri"), path)
    values.update(overrides or {})
    if overrides and "data_root" in overrides:
        values["data_root"] = resolve_data_root(overrides["data_root"], None)
    return make_recipe(values, str(path), overridden=set(overrides or ()))

