"""Rollout speed: a batched tensor env against a Gymnasium vector env of the same
dynamics, with the same policy and horizon: 2D navigation, or the pendulum family against
Gymnasium's own ``Pendulum-v1`` with each sub-environment's ``m`` and ``l`` set.

    python benchmarks/rl_rollouts.py [--family nav2d|pendulum] [--tasks 20]
                                     [--trajectories 20] [--horizon 100 (pendulum: 200)]
                                     [--repeats 5] [--threads 1]

Both paths roll out T x B trajectories of H steps with per-task Gaussian MLP policies
(64-64 tanh, one ``vmap``-ed forward per step for the whole batch):
``metafit.rl.rollout`` over ``Nav2dEnv`` / ``PendulumEnv`` (one tensor op per env step)
and ``metafit.rl.gym_envs.rollout_vector_env`` over a ``gymnasium.vector.SyncVectorEnv``
of ``Nav2dGymEnv`` / ``gymnasium.make("Pendulum-v1")`` (a Python ``step`` per
sub-environment). Also timed: the environments alone, stepped with fixed random actions.
Reports median steps per second (one step = one sub-environment transition) over
``--repeats`` runs; the rows go to ``rl_rollouts.json`` (``rl_rollouts_pendulum.json``)
and the table to ``RESULTS.md`` (block ``rl_rollouts``, ``rl_rollouts_pendulum``). Needs
the ``rl`` extra.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import gymnasium as gym
import torch
from common import add_output_options, load_average, machine, publish

from metafit.rl import GaussianMLPPolicy, Nav2d, Pendulum, TaskSampler, TensorEnv, per_task, rollout
from metafit.rl.gym_envs import nav2d_vector_env, rollout_vector_env


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _pendulum(mass: float, length: float) -> Callable[[], gym.Env]:
    def make() -> gym.Env:
        env = gym.make("Pendulum-v1")
        env.unwrapped.m, env.unwrapped.l = mass, length  # type: ignore[attr-defined]
        return env
    return make


def _envs(family: str, tasks: int, trajectories: int, horizon: int
          ) -> tuple[TensorEnv, gym.vector.SyncVectorEnv]:
    """The tensor env of ``tasks`` seeded tasks and the same tasks' Gymnasium vector env
    (task-major, ``trajectories`` sub-environments each)."""
    if family == "nav2d":
        nav = Nav2d(horizon=horizon)
        goals = TaskSampler(nav, seed=0).sample(tasks)["goal"]
        return nav.env({"goal": goals}), nav2d_vector_env(goals, trajectories)
    pendulum = Pendulum(horizon=horizon)
    params = TaskSampler(pendulum, seed=0).sample(tasks)
    makers = [_pendulum(m, length) for m, length in zip(params["mass"].tolist(),
                                                          params["length"].tolist(), strict=True)
              for _ in range(trajectories)]
    return pendulum.env(params), gym.vector.SyncVectorEnv(makers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--family", choices=("nav2d", "pendulum"), default="nav2d")
    parser.add_argument("--horizon", type=int, default=None,
                        help="steps per rollout (default: nav2d 100, pendulum 200)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    add_output_options(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    h = args.horizon or (100 if args.family == "nav2d" else 200)
    t, b = args.tasks, args.trajectories
    env, vec = _envs(args.family, t, b, h)
    act, limit = env.action_space.dim, env.action_space.high or 1.0
    policy = GaussianMLPPolicy(env.obs_dim, act, generator=torch.Generator().manual_seed(0))
    params = per_task(dict(policy.named_parameters()), t)
    actions = (2 * torch.rand(h, t, b, act, generator=torch.Generator().manual_seed(1)) - 1
               ) * limit  # [H, T, B, act]
    flat_actions = actions.reshape(h, t * b, act).numpy()

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
        rows.append({"path": label, "family": args.family, "tasks": t, "trajectories": b,
                     "horizon": h, "seconds": seconds, "steps_per_second": steps / seconds})
    vec.close()
    speedup = rows[1]["seconds"] / rows[0]["seconds"]
    lines = [f"Machine: {machine()}; load average {load_average()} (shared machine).",
             f"Family: {args.family}. {t} tasks x {b} trajectories x {h} steps = {steps:,} "
             f"transitions per rollout; median of {args.repeats} runs after a warm-up.", "",
             "| path | seconds per rollout | steps per second |", "|---|---|---|"]
    lines += [f"| {r['path']} | {r['seconds']:.3f} | {r['steps_per_second']:,.0f} |"
              for r in rows]
    lines += ["", f"With the policy, the tensor path is {speedup:.1f}x the Gymnasium path."]
    block = "\n".join(lines)
    print(block)
    name, what = (("rl_rollouts", "") if args.family == "nav2d" else
                  ("rl_rollouts_pendulum", ", pendulum against Pendulum-v1"))
    publish(args, name, f"Meta-RL rollouts: tensor env against Gymnasium{what}", block, rows)


if __name__ == "__main__":
    main()
