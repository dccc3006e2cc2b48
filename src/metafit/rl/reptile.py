"""Reptile on policies (Nichol et al. 2018, "On First-Order Meta-Learning Algorithms",
Algorithm 2, batched version, with policy-gradient inner steps).

Per task of a meta-batch of T tasks, K inner policy-gradient steps, each on fresh
trajectories sampled with the current adapted policy (:meth:`MAMLRL.sample
<metafit.rl.maml.MAMLRL.sample>`: support_k ~ pi_{theta_k}, theta_{k+1} = theta_k - alpha
grad REINFORCE(theta_k; support_k)); then the meta-update moves the shared parameters
towards the adapted ones::

    theta <- theta + epsilon * mean_t (theta_K[t] - theta)

No second derivative and no outer graph: the update is the difference of two parameter
sets. With one task and ``epsilon = 1`` it is K plain policy-gradient steps (the paper's
remark that Reptile with one task is SGD). The paper anneals epsilon linearly to 0; here
it is constant.

:func:`reptile_step` replays the inner steps on the episode's stored support trajectories
(:meth:`MAMLRL.adapted <metafit.rl.maml.MAMLRL.adapted>` without a graph), so it takes
the same :class:`~metafit.rl.maml.MetaEpisode` as the TRPO step; the replay repeats the
K inner gradients (no rollout) and gives the very parameters the sampling used.
"""

from __future__ import annotations

import math

import torch

from metafit.rl.maml import MAMLRL, MetaEpisode
from metafit.rl.shard import TaskShard

__all__ = ["reptile_step"]


def reptile_step(algo: MAMLRL, episode: MetaEpisode, epsilon: float,
                 shard: TaskShard | None = None) -> dict[str, float]:
    """One Reptile meta-update of ``algo``'s policy from ``episode`` (module docstring),
    in place.

    Args:
        algo: the learner whose policy the episode was sampled with (its parameters must
            not have changed since).
        episode: T tasks, K >= 1 inner steps (``episode.supports``).
        epsilon: the outer step size (0 < epsilon; 1 moves to the tasks' mean).
        shard: this rank's block of a distributed meta-batch (``episode`` holds its
            tasks); the means are then over the whole meta-batch.

    Returns:
        metrics: ``step_norm`` (norm of the applied update ``epsilon * mean_t (theta_K[t] -
        theta)`` over all parameters) and ``adapted_distance`` (mean over tasks of the norm
        of ``theta_K[t] - theta``).

    Raises:
        ValueError: ``epsilon`` not positive or the episode has no inner step.
    """
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a positive number, got {epsilon}")
    if not episode.supports:
        raise ValueError("Reptile needs at least one inner step: an episode with none "
                         "leaves theta_K - theta at 0")
    adapted = algo.adapted(episode, graph=False)  # {name: [T, *param]}
    live = {n: p for n, p in algo.policy.named_parameters() if p.requires_grad}
    step_sq = 0.0
    distance_sq = torch.zeros(episode.query.num_tasks, dtype=torch.float64)  # [T]
    with torch.no_grad():
        for name, p in live.items():
            diff = adapted[name] - p  # [T, *param]
            distance_sq += diff.reshape(diff.shape[0], -1).double().pow(2).sum(dim=1)
            mean = diff.mean(dim=0) if shard is None else shard.mean_over_tasks(diff)
            update = epsilon * mean  # [*param]
            step_sq += float(update.double().pow(2).sum())
            p.add_(update)
    distances = distance_sq.sqrt()  # [T]
    distance = distances.mean() if shard is None else shard.mean_over_tasks(distances)
    return {"step_norm": math.sqrt(step_sq), "adapted_distance": float(distance)}
