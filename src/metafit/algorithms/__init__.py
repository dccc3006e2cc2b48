"""Meta-learning algorithms, one file each, all in one registry.

``build_algorithm("maml", model, inner_lr=0.4)`` or the classes directly
(``MAML(model, ...)``). Importing this package registers every algorithm.
"""

from metafit.algorithms.anil import ANIL
from metafit.algorithms.base import Algorithm
from metafit.algorithms.finetune import FineTune, LinearProbe
from metafit.algorithms.learner import Learner
from metafit.algorithms.maml import FOMAML, MAML
from metafit.algorithms.metasgd import MetaSGD
from metafit.algorithms.protonet import ProtoNet
from metafit.algorithms.registry import (
    build_algorithm,
    get_algorithm,
    list_algorithms,
    register_algorithm,
)
from metafit.algorithms.reptile import Reptile

__all__ = [
    "ANIL",
    "FOMAML",
    "MAML",
    "Algorithm",
    "FineTune",
    "Learner",
    "LinearProbe",
    "MetaSGD",
    "ProtoNet",
    "Reptile",
    "build_algorithm",
    "get_algorithm",
    "list_algorithms",
    "register_algorithm",
]
