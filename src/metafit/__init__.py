"""metafit: meta-learning-based fine-tuning.

Public API (see README.md)::

    import metafit as mf
    ds = mf.data.Omniglot(root, image_size=28)
    sampler = mf.EpisodeSampler(ds, ways=5, shots=1, queries=15, seed=0)
    algo = mf.MAML(mf.models.conv4(out_features=5), inner_lr=0.4)
    grads, metrics = algo.meta_gradients(sampler.sample(32))
    result = mf.evaluate(algo, test_sampler, episodes=600)
"""

from metafit import data, functional, models  # noqa: E402
from metafit._version import __version__
from metafit.algorithms import (  # noqa: E402
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
from metafit.config.recipe import load_recipe  # noqa: E402
from metafit.config.schema import Recipe  # noqa: E402
from metafit.data.sampler import EpisodeSampler  # noqa: E402
from metafit.episodes import Episode, Episodes  # noqa: E402
from metafit.evaluation.protocol import EvalResult, evaluate  # noqa: E402
from metafit.execution import Execution  # noqa: E402

__all__ = [
    "ANIL",
    "FOMAML",
    "MAML",
    "Algorithm",
    "Episode",
    "EpisodeSampler",
    "Episodes",
    "Execution",
    "EvalResult",
    "FineTune",
    "Learner",
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
