"""One registry of algorithms, used by recipes, the command line, the tests and the server.

    @register_algorithm("maml")
    class MAML(Algorithm): ...

    algo = build_algorithm("maml", model, inner_lr=0.4, inner_steps=1)
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

if TYPE_CHECKING:
    from metafit.algorithms.base import Algorithm

__all__ = [
    "COMMON_OPTIONS",
    "UnknownAlgorithmError",
    "build_algorithm",
    "get_algorithm",
    "list_algorithms",
    "register_algorithm",
]

_REGISTRY: dict[str, type[Algorithm]] = {}

COMMON_OPTIONS: frozenset[str] = frozenset(
    {"inner_lr", "inner_steps", "eval_inner_steps", "first_order", "num_classes",
     "execution"}
)
"""Options a recipe may set for any algorithm; :func:`build_algorithm` drops those an
algorithm does not take (e.g. ``inner_lr`` for ProtoNet) instead of failing."""

A = TypeVar("A", bound="type[Algorithm]")


class UnknownAlgorithmError(KeyError, ValueError):
    """An algorithm name that is not registered (both a ``KeyError`` and a ``ValueError``)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _normalise(name: str) -> str:
    return name.strip().lower()


def register_algorithm(name: str) -> Callable[[A], A]:
    """Class decorator: register an :class:`Algorithm` subclass under ``name`` (lower case)
    and set its ``name`` class attribute. Registering a second class under a taken name
    raises ``ValueError``."""
    key = _normalise(name)

    def decorate(cls: A) -> A:
        existing = _REGISTRY.get(key)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"algorithm {key!r} is already registered to {existing.__name__}")
        _REGISTRY[key] = cls
        cls.name = key
        return cls

    return decorate


def list_algorithms() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def get_algorithm(name: str) -> type[Algorithm]:
    """The class registered under ``name`` (case-insensitive).

    Raises:
        UnknownAlgorithmError: naming the registered algorithms and the closest match.
    """
    key = _normalise(name)
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = difflib.get_close_matches(key, list(_REGISTRY), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UnknownAlgorithmError(
        f"unknown algorithm {name!r}{hint} Registered: {', '.join(list_algorithms())}"
    )


def build_algorithm(name: str, model: nn.Module, **options: Any) -> Algorithm:
    """``get_algorithm(name)(model, **options)``, keeping only the options its ``__init__``
    accepts.

    Options in :data:`COMMON_OPTIONS` that the algorithm does not take are dropped silently;
    any other unknown option raises ``TypeError`` naming it and the accepted ones.
    """
    cls = get_algorithm(name)
    signature = inspect.signature(cls.__init__)
    params = signature.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return cls(model, **options)
    accepted = [n for n in params if n not in ("self", "model")]
    unknown = sorted(k for k in options if k not in accepted and k not in COMMON_OPTIONS)
    if unknown:
        raise TypeError(
            f"algorithm {cls.name!r} got unknown option(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(accepted)}"
        )
    kept = {k: v for k, v in options.items() if k in accepted}
    return cls(model, **kept)
