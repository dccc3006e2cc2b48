"""metafit: meta-learning-based fine-tuning.

Public API (see README.md)::

    import metafit as mf
    ds = mf.data.Omniglot(root, image_size=28)
    sampler = mf.EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)
    algo = mf.MAML(mf.models.conv4(out_features=5), inner_lr=0.4)
    grads, metrics = algo.meta_gradients(sampler.sample(32))
    result = mf.evaluate(algo, test_sampler, episodes=600)

Names are imported on first use (PEP 562), so ``import metafit``, the recipe layer and
``metafit --help`` do not pay for importing torch until a name that needs it is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from metafit._version import __version__

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "ANIL": "metafit.algorithms",
    "FOMAML": "metafit.algorithms",
    "MAML": "metafit.algorithms",
    "Algorithm": "metafit.algorithms",
    "FineTune": "metafit.algorithms",
    "Learner": "metafit.algorithms",
    "MetaSGD": "metafit.algorithms",
    "ProtoNet": "metafit.algorithms",
    "Reptile": "metafit.algorithms",
    "build_algorithm": "metafit.algorithms",
    "get_algorithm": "metafit.algorithms",
    "list_algorithms": "metafit.algorithms",
    "register_algorithm": "metafit.algorithms",
    "load_recipe": "metafit.config.recipe",
    "Recipe": "metafit.config.schema",
    "EpisodeSampler": "metafit.data.sampler",
    "Episode": "metafit.episodes",
    "Episodes": "metafit.episodes",
    "EvalResult": "metafit.evaluation.protocol",
    "evaluate": "metafit.evaluation.protocol",
    "Execution": "metafit.execution",
}
_SUBMODULES = ("data", "functional", "models")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"metafit.{name}")
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'metafit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})


if TYPE_CHECKING:  # pragma: no cover
    from metafit import data, functional, models
    from metafit.algorithms import (
        ANIL,
        FOMAML,
        MAML,
        Algorithm,
        FineTune,
        Learner,
        MetaSGD,
        ProtoNet,
        Reptile,
        build_algorithm,
        get_algorithm,
        list_algorithms,
        register_algorithm,
    )
    from metafit.config.recipe import load_recipe
    from metafit.config.schema import Recipe
    from metafit.data.sampler import EpisodeSampler
    from metafit.episodes import Episode, Episodes
    from metafit.evaluation.protocol import EvalResult, evaluate
    from metafit.execution import Execution

__all__ = [
    "ANIL",
    "Algorithm",
    "Episode",
    "EpisodeSampler",
    "Episodes",
    "EvalResult",
    "Execution",
    "FOMAML",
    "FineTune",
    "Learner",
    "MAML",
    "MetaSGD",
    "ProtoNet",
    "Recipe",
    "Reptile",
    "__version__",
    "build_algorithm",
    "data",
    "evaluate",
    "functional",
    "get_algorithm",
    "list_algorithms",
    "load_recipe",
    "models",
    "register_algorithm",
]
