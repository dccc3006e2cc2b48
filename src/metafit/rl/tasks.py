"""Seeded task sampling for a family of MDPs: a running stream of training tasks and fixed
evaluation tasks, as :class:`metafit.data.EpisodeSampler` does for supervised tasks, and
the random streams their rollouts draw from.

``sample(n)`` advances the sampler's generator (successive calls give fresh tasks; a
sampler rebuilt with the same seed gives the same sequence). ``fixed(n)`` draws from a
separate generator derived from the seed alone, so every process, algorithm and call
gets the same evaluation tasks. Rollouts (actions, environment noise) draw from their own
streams: :attr:`TaskSampler.rollouts` runs alongside the training tasks (and is saved
with them in :meth:`TaskSampler.state_dict`, so that a resumed run samples the same
trajectories), and :meth:`TaskSampler.fixed_rollouts` starts afresh for every evaluation,
so every algorithm evaluated with one seed meets the same noise. With continuous task
parameters (2D goals) the two task streams share no task almost surely; for finite
families, hold out with a different ``seed`` as well.
"""

from __future__ import annotations

import torch

from metafit.rl.env import MDPFamily, TaskParams

__all__ = ["TaskSampler"]

_FIXED_STREAM = 0x5EED_F1ED  # offsets the seed of the fixed-task generator (as EpisodeSampler)
_ROLLOUT_STREAM = 0x0A11_0075  # offsets the seeds of the rollouts' generators


class TaskSampler:
    """Draws tasks of ``family`` from a generator seeded with ``seed``.

    Args:
        family: the MDP family.
        seed: seed of the training stream; the fixed evaluation tasks use
            ``seed ^ 0x5EEDF1ED``; the training rollouts ``seed ^ 0x0A110075``, the
            evaluation rollouts ``seed ^ 0x5EEDF1ED ^ 0x0A110075``.

    Attributes:
        generator: the training tasks' stream.
        rollouts: the training rollouts' stream (pass it to
            :meth:`~metafit.rl.MAMLRL.sample`).
    """

    def __init__(self, family: MDPFamily, seed: int = 0) -> None:
        self.family = family
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.rollouts = torch.Generator().manual_seed(seed ^ _ROLLOUT_STREAM)

    def sample(self, n: int) -> TaskParams:
        """``n`` fresh training tasks (``[n, ...]`` per parameter)."""
        _check_positive(n)
        return self.family.sample(n, self.generator)

    def fixed(self, n: int) -> TaskParams:
        """The same ``n`` evaluation tasks for this seed, in every process and call."""
        _check_positive(n)
        return self.family.sample(n, self.fixed_generator())

    def fixed_generator(self) -> torch.Generator:
        """A fresh generator of the stream :meth:`fixed` draws from."""
        return torch.Generator().manual_seed(self.seed ^ _FIXED_STREAM)

    def fixed_rollouts(self) -> torch.Generator:
        """A fresh generator for the rollouts on the :meth:`fixed` tasks (the same stream
        in every call)."""
        return torch.Generator().manual_seed(self.seed ^ _FIXED_STREAM ^ _ROLLOUT_STREAM)

    def state_dict(self) -> dict[str, object]:
        """The seed and the running generators' states (tasks, rollouts; for
        checkpoints)."""
        return {"seed": self.seed, "generator": self.generator.get_state(),
                "rollouts": self.rollouts.get_state()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.seed = int(state["seed"])  # type: ignore[call-overload]
        self.generator.set_state(state["generator"])  # type: ignore[arg-type]
        self.rollouts.set_state(state["rollouts"])  # type: ignore[arg-type]


def _check_positive(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ValueError(f"the number of tasks must be a positive integer, got {n!r}")
