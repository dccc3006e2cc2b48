"""Meta-reinforcement learning (docs/rl.md, coming with the rest of the package).

* :mod:`.policies`: Gaussian and categorical MLP policies, run per task by ``vmap``.
"""

from metafit.rl.policies import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    Policy,
    per_task,
    policy_output,
)

__all__ = [
    "CategoricalMLPPolicy",
    "GaussianMLPPolicy",
    "Policy",
    "per_task",
    "policy_output",
]
