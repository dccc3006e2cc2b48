"""metafit: meta-learning-based fine-tuning."""

from metafit import data
from metafit.episodes import Episode, Episodes
from metafit.sampler import EpisodeSampler

__version__ = "0.1.0"

__all__ = ["Episode", "Episodes", "EpisodeSampler", "data", "__version__"]

# -- algorithms and the functional inner loop ----------------------------------------------
from metafit import functional  # noqa: E402
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

__all__ += [
    "ANIL",
    "FOMAML",
    "MAML",
    "Algorithm",
    "FineTune",
    "Learner",
    "MetaSGD",
    "ProtoNet",
    "Reptile",
    "build_algorithm",
    "functional",
    "get_algorithm",
    "list_algorithms",
    "register_algorithm",
]
