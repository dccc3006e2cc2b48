"""Rollout speed: the batched tensor 2D-navigation env against a Gymnasium vector env of
the same dynamics, with the same policy and horizon.

    python benchmarks/rl_rollouts.py [--tasks 20] [--trajectories 20] [--horizon 100]
                                     [--repeats 5] [--threads 1]

Both paths roll out T x B trajectories of H steps with per-task Gaussian MLP policies
(64-64 tanh, one ``vmap``-ed forward per step for the whole batch):
``metafit.rl.rollout`` over ``Nav2dEnv`` (one tensor op per env step) and
``metafit.rl.gym_envs.rollout_vector_env`` over a ``gymnasium.vector.SyncVectorEnv`` of
``Nav2dGymEnv`` (a Python ``step`` per sub-environment). Also timed: the environments
alone, stepped with fixed random actions. Reports median steps per second (one step = one
sub-environment transition) over ``--repeats`` runs; the rows go to ``rl_rollouts.json``
and the table to ``RESULTS.md`` (block ``rl_rollouts``). Needs the ``rl`` extra.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import add_output_options, load_average, machine, publish

from metafit.rl import GaussianMLPPolicy, Nav2d, TaskSampler, per_task, rollout
from metafit.rl.gym_envs import nav2d_vector_env, rollout_vector_env


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--horizon", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    add_output_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t, b, h = args.tasks, args.trajectories, args.horizon
    family = Nav2d(horizon=h)
    goals = TaskSampler(family, seed=0).sample(t)["goal"]
    policy = GaussianMLPPolicy(2, 2, generator=torch.Generator().manual_seed(0))
    params = per_task(dict(policy.named_parameters()), t)
    env = family.env({"goal": goals})
    vec = nav2d_vector_env(goals, b)
    actions = torch.rand(h, t, b, 2, generator=torch.Generator().manual_seed(1)) * 0.2 - 0.1
    flat_actions = actions.reshape(h, t * b, 2).numpy()

    def tensor_rollout() -> object:
        return rollout(env, policy, params, b, torch.Generator().manual_seed(2))

    def gym_rollout() -> object:
        return rollout_vector_env(vec, policy, params, b, h, torch.Generator().manual_seed(2),
                                  seed=0)

    def tensor_env_only() -> object:
        gen = torch.Generator().manual_seed(3)
        state, _ = env.reset(b, gen)
        for k in range(h):
            state = env.step(state, actions[k], gen).state
        return state

    def gym_env_only() -> object:
        vec.reset(seed=0)
        for k in range(h):
            vec.step(flat_actions[k])
        return None

    steps = t * b * h
    rows = []
    for label, run in (("tensor env + policy (rollout)", tensor_rollout),
                       ("Gymnasium SyncVectorEnv + policy (rollout_vector_env)", gym_rollout),
                       ("tensor env alone", tensor_env_only),
                       ("Gymnasium SyncVectorEnv alone", gym_env_only)):
        seconds = _median_seconds(run, args.repeats)
        rows.append({"path": label, "tasks": t, "trajectories": b, "horizon": h,
                     "seconds": seconds, "steps_per_second": steps / seconds})
    vec.close()
    speedup = rows[1]["seconds"] / rows[0]["seconds"]
    lines = [f"Machine: {machine()}; load average {load_average()} (shared machine).",
             f"{t} tasks x {b} trajectories x {h} steps = {steps:,} transitions per rollout; "
             f"median of {args.repeats} runs after a warm-up.", "",
             "| path | seconds per rollout | steps per second |", "|---|---|---|"]
    lines += [f"| {r['path']} | {r['seconds']:.3f} | {r['steps_per_second']:,.0f} |"
              for r in rows]
    lines += ["", f"With the policy, the tensor path is {speedup:.1f}x the Gymnasium path."]
    block = "\n".join(lines)
    print(block)
    publish(args, "rl_rollouts", "Meta-RL rollouts: tensor env against Gymnasium", block, rows)


if __name__ == "__main__":
    main()
