"""Search spaces declared in a recipe's ``search:`` section, checked before any trial runs.

A recipe names the keys to tune and the distribution of each::

    search:
      inner_lr:    {type: loguniform, low: 0.001, high: 0.5}
      inner_steps: {type: int, low: 1, high: 5}
      outer_lr:    {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      hidden:      {type: categorical, choices: [40, 80, 160]}   # architecture search
      depth:       {type: int, low: 1, high: 3}
      algorithm:   [maml, fomaml]                                # a list: categorical

Types: ``uniform`` and ``loguniform`` (floats; ``step`` optional for uniform), ``int``
(``step`` optional, ``log: true`` for a log scale) and ``categorical`` (``choices``).
Any key of :class:`~metafit.config.recipe.Recipe` can be searched except the ones naming or
locating the run. Every bound and every choice is validated as a recipe value up front,
so a study never starts with a space that fails in trial 17.

This module does not import Optuna: :func:`parse_search_space` works without the
``tune`` extra, and :func:`suggest` takes any object with Optuna's ``suggest_*`` methods.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from metafit.config.recipe import RecipeError
from metafit.config.schema import FIELDS, Recipe, make_recipe

__all__ = ["ParamSpec", "SearchSpace", "parse_search_space", "suggest", "grid_values",
           "UNSEARCHABLE"]

#: Recipe keys that name or locate a run rather than shape it.
UNSEARCHABLE = frozenset({"name", "description", "search", "data_root", "init_from",
                          "device", "tensorboard", "mlflow", "mlflow_uri",
                          "mlflow_experiment"})

Kind = Literal["uniform", "loguniform", "int", "categorical"]
KINDS: tuple[Kind, ...] = ("uniform", "loguniform", "int", "categorical")
_ALLOWED = {
    "uniform": {"type", "low", "high", "step"},
    "loguniform": {"type", "low", "high"},
    "int": {"type", "low", "high", "step", "log"},
    "categorical": {"type", "choices"},
}


class Suggester(Protocol):
    """What :func:`suggest` needs of an ``optuna.Trial``."""

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = ...,
                      log: bool = ...) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, step: int = ...,
                    log: bool = ...) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class ParamSpec:
    """One searched recipe key and its distribution."""

    name: str
    kind: Kind
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def candidates(self) -> list[Any]:
        """Values that must each be valid recipe values: the bounds, or every choice."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name} in {list(self.choices)}"
        scale = " (log)" if self.kind == "loguniform" or self.log else ""
        step = f" step {self.step}" if self.step is not None else ""
        return f"{self.name} {self.kind} [{self.low}, {self.high}]{step}{scale}"


@dataclass
class SearchSpace:
    """The parsed ``search:`` section: one :class:`ParamSpec` per searched key."""

    params: list[ParamSpec] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def describe(self) -> list[str]:
        return [p.describe() for p in self.params]


def _problem(name: str, message: str) -> RecipeError:
    return RecipeError(f"search space: '{name}': {message}")


def _number(name: str, spec: dict[str, Any], key: str, integer: bool) -> float | int:
    if key not in spec:
        raise _problem(name, f"'{spec['type']}' needs '{key}'")
    value = spec[key]
    if isinstance(value, str):  # YAML reads 1e-3 as a string
        try:
            value = float(value)
        except ValueError:
            raise _problem(name, f"{key} must be a number (got {value!r})") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _problem(name, f"{key} must be a finite number (got {value!r})")
    if integer:
        if float(value) != int(value):
            raise _problem(name, f"{key} must be an integer for type 'int' (got {value!r})")
        return int(value)
    return float(value)


def _parse_one(name: str, raw: Any) -> ParamSpec:
    if name not in FIELDS:
        close = difflib.get_close_matches(name, FIELDS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise _problem(name, f"not a recipe key{hint}")
    if name in UNSEARCHABLE:
        raise _problem(name, "names or locates the run and cannot be searched")
    if isinstance(raw, list):
        raw = {"type": "categorical", "choices": raw}
    if not isinstance(raw, dict):
        raise _problem(name, "expected a mapping like {type: loguniform, low: 0.001, "
                       f"high: 0.1}} or a list of choices (got {raw!r})")
    kind = raw.get("type")
    if kind not in KINDS:
        raise _problem(name, f"unknown type {kind!r}; use one of {', '.join(KINDS)}")
    extra = set(raw) - _ALLOWED[kind]
    if extra:
        raise _problem(name, f"unknown option(s) {sorted(extra)} for type '{kind}' "
                       f"(allowed: {sorted(_ALLOWED[kind] - {'type'})})")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _problem(name, "a categorical needs a non-empty list of choices")
        if len({repr(c) for c in choices}) != len(choices):
            raise _problem(name, f"choices repeat a value: {choices}")
        for c in choices:
            if c is not None and not isinstance(c, bool | int | float | str):
                raise _problem(name, f"choices must be numbers, strings, booleans or null "
                               f"(got {c!r})")
        return ParamSpec(name, kind, choices=tuple(choices))
    integer = kind == "int"
    low, high = (_number(name, raw, k, integer) for k in ("low", "high"))
    if low > high:
        raise _problem(name, f"low ({low}) > high ({high})")
    log = kind == "loguniform" or bool(raw.get("log", False))
    if log and low <= 0:
        raise _problem(name, f"a log scale needs low > 0 (got {low})")
    step = _number(name, raw, "step", integer) if "step" in raw else None
    if step is not None and step <= 0:
        raise _problem(name, f"step must be > 0 (got {step})")
    if step is not None and log:
        raise _problem(name, "step and a log scale cannot be combined")
    return ParamSpec(name, kind, low=low, high=high, step=step, log=log)


def parse_search_space(recipe: Recipe) -> SearchSpace:
    """Parse and check ``recipe.search``.

    Every bound and choice is applied to the recipe and validated (types, ranges such as
    ``inner_lr > 0``, known algorithm names, model/dataset compatibility).

    Raises:
        RecipeError: an empty section, an unknown or unsearchable key, an unknown type,
            ``low > high``, an empty categorical, or a value the recipe rejects; the
            message names the key.
    """
    from metafit.algorithms import list_algorithms

    if not recipe.search:
        raise RecipeError(f"recipe '{recipe.name}' has no search: section; add one, e.g. "
                          "search: {inner_lr: {type: loguniform, low: 0.001, high: 0.5}}")
    space = SearchSpace([_parse_one(str(k), v) for k, v in recipe.search.items()])
    base = recipe.model_dump(exclude={"search"})
    for spec in space.params:
        for value in spec.candidates():
            if spec.name == "algorithm" and value not in list_algorithms():
                raise _problem(spec.name, f"unknown algorithm {value!r}; known: "
                               f"{', '.join(list_algorithms())}")
            try:
                make_recipe({**base, spec.name: value}, "the search space")
            except RecipeError as e:
                raise _problem(spec.name, f"value {value!r} is not a valid recipe value: "
                               f"{e}") from None
    return space


def suggest(space: SearchSpace, trial: Suggester) -> dict[str, Any]:
    """Draw one value per searched key from ``trial`` (an ``optuna.Trial``)."""
    values: dict[str, Any] = {}
    for p in space.params:
        if p.kind == "categorical":
            values[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            assert p.low is not None and p.high is not None
            values[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high),
                                               step=int(p.step or 1), log=p.log)
        else:
            assert p.low is not None and p.high is not None
            values[p.name] = trial.suggest_float(p.name, float(p.low), float(p.high),
                                                 step=p.step, log=p.log)
    return values


#: Most points a grid search may have (the grid is built in memory, by Optuna too).
MAX_GRID_POINTS = 100_000


def _axis_size(p: Any) -> int:
    """Number of values of ``p``'s grid axis, counted without building it."""
    if p.kind == "categorical":
        return len(p.choices)
    if p.kind == "int" and not p.log:
        return max(0, (int(p.high) - int(p.low)) // int(p.step or 1) + 1)
    if p.kind == "uniform" and p.step is not None:
        return int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
    raise _problem(p.name, "a grid search needs a finite grid: give a step, or list the "
                   "values as a categorical")


def grid_values(space: SearchSpace) -> dict[str, list[Any]]:
    """The grid of a grid search: categoricals' choices, every int (or stepped uniform)
    value in its range. A continuous range without a step has no grid.

    Raises:
        RecipeError: a continuous range without ``step``; a grid of more than
            :data:`MAX_GRID_POINTS` points (counted before any is built).
    """
    sizes = {p.name: _axis_size(p) for p in space.params}
    total = math.prod(sizes.values())
    if total > MAX_GRID_POINTS:
        widest = max(sizes, key=lambda name: sizes[name])
        raise _problem(widest, f"a grid of {total:,} points (this key: {sizes[widest]:,} "
                       f"values) is over the {MAX_GRID_POINTS:,} a grid search may have: "
                       "give a coarser step, fewer values, or sampler tpe/random")
    grid: dict[str, list[Any]] = {}
    for p in space.params:
        if p.kind == "categorical":
            grid[p.name] = list(p.choices)
        elif p.kind == "int" and not p.log:
            assert p.low is not None and p.high is not None
            grid[p.name] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        elif p.kind == "uniform" and p.step is not None:
            assert p.low is not None and p.high is not None
            n = int(math.floor((p.high - p.low) / p.step + 1e-9))
            grid[p.name] = [float(p.low) + i * float(p.step) for i in range(n + 1)]
        else:
            raise _problem(p.name, "a grid search needs a finite grid: give a step, or "
                           "list the values as a categorical")
    return grid


def grid_size(space: SearchSpace) -> int:
    """Number of points of :func:`grid_values`' grid (counted, not built)."""
    return math.prod(_axis_size(p) for p in space.params)

