"""MAML-TRPO on the bandit and tabular-MDP families at settings comparable to rows of the
RL^2 paper's tables (Duan et al. 2016, "RL^2: Fast Reinforcement Learning via Slow
Reinforcement Learning", Tables 1-2), next to a random policy and an oracle that knows
the task.

    python benchmarks/rl_rl2_rows.py                    # all rows, 100 outer steps: ~30 s
    python benchmarks/rl_rl2_rows.py --iterations 300   # block rl_rl2_rows_300it: ~2 min
    python benchmarks/rl_rl2_rows.py --iterations 5     # a smoke run

The RL^2 tables score an agent by its *total* reward over a trial of n interactions with
one new task: n pulls of a k-armed Bernoulli bandit (arm probabilities uniform), or n
episodes of horizon 10 in a random tabular MDP (10 states, 5 actions, mean rewards
Normal(1, 1), transitions Dirichlet(1)). MAML's policies are memoryless, so a trial is
played the only way MAML can: the first ``n // 2`` interactions with the meta-learned
policy theta (its support trajectories), one policy-gradient step at the recipe's inner
rate, the other ``n - n // 2`` with the adapted policy theta'. Its trial total is
``n//2 * J(theta) + (n - n//2) * J(theta')``, with J the *exact* expected return per pull
(bandits: :func:`~metafit.rl.bandit_expected_return`) or per episode (tabular:
:func:`~metafit.rl.tabular_expected_return`), averaged over the held-out tasks (theta'
depends on the sampled support trajectories; its J is exact given them).

Bandit trials are episodes of one pull (``horizon=1``; the policy has no state, so ``B``
pulls of one episode or ``B`` episodes of one pull carry the same information), so the
support set of a trial of n pulls is ``n // 2`` one-pull trajectories, and the recipe is
trained with that many trajectories per task. Tabular trials use the paper's horizon 10.

Columns (per trial, mean +- 95% CI over ``--eval-tasks`` held-out tasks, the fixed test
tasks of the recipe's sampler, ``TaskSampler(seed + 2)``): *random* (uniform policy,
exact), *MAML theta only* (the meta-learned policy for all n, no adaptation), *MAML
adapted trial* (the protocol above), *MAML trial - random* (the
per-task difference, whose CI is free of the task-to-task spread), *theta' per
interaction x n* (what the adapted policy
would earn over a whole trial: not a trial score, it needs the support half first),
*theta's entropy* (of the meta-learned
policy's action distribution, mean over tasks and, for MDPs, states; uniform: ln k or
ln A = 1.61 nats: near 0, the inner step has no gradient left to adapt with),
*oracle* (knows the task: n x the best arm's probability; for MDPs n x the optimal
finite-horizon value from state 0, by dynamic programming with the true model, a
non-stationary policy), and the paper's own random and RL^2 (GRU) numbers for the row
(:data:`PAPER`). The paper could not be read from this machine; its numbers are those
the README of lucaslingle/pytorch_rl2 (a reproduction of RL^2) quotes from its Tables 1
and 2 in a "(paper)" column, next to its own reproduction, which matches them. Our random
column agrees with the paper's to within its CI on every row, which is the check that the
families and the trial protocol are the paper's.

Training: the shipped recipes ``rl_bandit_maml`` / ``rl_tabular_maml`` (MAML-TRPO, one
inner step) with the row's overrides, ``--iterations`` outer steps of 20 tasks through the
library API (``build_rl_algorithm``, ``TaskSampler``, ``trpo_step``); one thread.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
from common import add_output_options, load_average, machine, publish
from torch import Tensor

from metafit.config.recipe import load_recipe
from metafit.config.schema import Recipe
from metafit.evaluation.protocol import ci95
from metafit.rl import (
    MAMLRL,
    TaskParams,
    TaskSampler,
    bandit_expected_return,
    policy_output,
    rollout,
    tabular_expected_return,
    trpo_step,
)
from metafit.rl.from_recipe import build_family, build_rl_algorithm, trpo_settings
from metafit.runs.trained import SPLIT_SEED_OFFSET

log = logging.getLogger("rl_rl2_rows")


@dataclass(frozen=True)
class Row:
    """One RL^2 table row: the family's recipe and overrides, and the trial length n."""

    name: str
    table: str  # where the RL^2 paper has the row
    recipe: str
    overrides: dict[str, Any]
    n: int  # pulls (bandits) or episodes (tabular) per trial

    @property
    def support(self) -> int:
        return self.n // 2


#: The RL^2 paper's (random, RL^2) trial totals per row (Duan et al. 2016, Tables 1-2, as
#: quoted in the README of github.com/lucaslingle/pytorch_rl2; see the module docstring).
PAPER: dict[str, tuple[float, float]] = {
    "bandit_k5_n10": (5.0, 6.7), "bandit_k5_n100": (49.9, 78.7),
    "tabular_n10": (100.1, 156.2), "tabular_n25": (250.2, 445.7),
}

ROWS = {
    "bandit_k5_n10": Row("bandit_k5_n10", "Table 1: k=5 arms, n=10 pulls", "rl_bandit_maml",
                         {"arms": 5, "horizon": 1}, 10),
    "bandit_k5_n100": Row("bandit_k5_n100", "Table 1: k=5 arms, n=100 pulls",
                          "rl_bandit_maml", {"arms": 5, "horizon": 1}, 100),
    "tabular_n10": Row("tabular_n10", "Table 2: n=10 episodes (S=10, A=5, horizon 10)",
                       "rl_tabular_maml", {"states": 10, "actions": 5, "horizon": 10}, 10),
    "tabular_n25": Row("tabular_n25", "Table 2: n=25 episodes (S=10, A=5, horizon 10)",
                       "rl_tabular_maml", {"states": 10, "actions": 5, "horizon": 10}, 25),
}


def recipe_of(row: Row, args: argparse.Namespace) -> Recipe:
    """The row's shipped recipe with its overrides: ``n // 2`` support trajectories."""
    return load_recipe(row.recipe, {**row.overrides, "trajectories": row.support,
                                    "iterations": args.iterations, "seed": args.seed})


def train(algo: MAMLRL, recipe: Recipe) -> tuple[float, list[dict[str, float]]]:
    """``recipe.iterations`` MAML-TRPO steps on fresh tasks; seconds and per-step metrics."""
    family = build_family(recipe)
    tasks = TaskSampler(family, seed=recipe.seed)
    settings = trpo_settings(recipe)
    history = []
    start = time.perf_counter()
    for step in range(recipe.iterations):
        episode = algo.sample(family.env(tasks.sample(recipe.meta_batch)), recipe.trajectories,
                              tasks.rollouts)
        metrics = trpo_step(algo, episode, settings)
        returns = episode.returns().mean(dim=0)  # [2]
        history.append({"step": step, "return_before": float(returns[0]),
                        "return_after": float(returns[-1]), **metrics})
    return time.perf_counter() - start, history


def action_probs(algo: MAMLRL, params: dict[str, Tensor], tasks: TaskParams, kind: str
                 ) -> Tensor:
    """The memoryless policies' action probabilities: bandits ``[T, K]`` (constant
    observation), tabular MDPs ``[T, S, A]`` (every one-hot state)."""
    if kind == "bandit":
        count = tasks["probs"].shape[0]
        obs = torch.ones(count, 1, 1)  # [T, B=1, 1]
        return policy_output(algo.policy, params, obs).softmax(-1)[:, 0]  # [T, K]
    count, states, _ = tasks["rewards"].shape
    obs = torch.eye(states).expand(count, states, states)  # [T, B=S, S]
    return policy_output(algo.policy, params, obs).softmax(-1)  # [T, S, A]


def expected(tasks: TaskParams, probs: Tensor, kind: str, horizon: int) -> Tensor:
    """Exact expected undiscounted return per interaction (pull or episode): ``[T]``."""
    if kind == "bandit":
        return bandit_expected_return(tasks, probs, horizon)
    return tabular_expected_return(tasks, probs, horizon)


def optimal_value(tasks: TaskParams, horizon: int) -> Tensor:
    """The best expected return from state 0 of an agent that knows the MDP: finite-horizon
    value iteration, ``V_H = 0``, ``V_t(s) = max_a R(s, a) + sum_s' P(s, a, s') V_{t+1}(s')``
    -> ``[T]``."""
    rewards, transitions = tasks["rewards"], tasks["transitions"]  # [T, S, A], [T, S, A, S]
    value = rewards.new_zeros(rewards.shape[:2])  # [T, S]
    for _ in range(horizon):
        value = (rewards + torch.einsum("tsan,tn->tsa", transitions, value)).amax(-1)
    return value[:, 0]


def evaluate(algo: MAMLRL, recipe: Recipe, row: Row, kind: str, count: int
             ) -> dict[str, Any]:
    """Per-trial scores on ``count`` fixed test tasks (module docstring)."""
    family = build_family(recipe)
    sampler = TaskSampler(family, seed=recipe.seed + SPLIT_SEED_OFFSET["test"])
    tasks = sampler.fixed(count)
    env = family.env(tasks)
    horizon = family.horizon
    with torch.no_grad():
        theta = algo.initial_params(count, graph=False)
        support = algo.process(rollout(env, algo.policy, theta, row.support,
                                       sampler.fixed_rollouts()))
        adapted = {n: p.detach() for n, p in algo.inner_step(theta, support, 0,
                                                             graph=False).items()}
        probs = action_probs(algo, theta, tasks, kind)  # [T, K] or [T, S, A]
        j_theta = expected(tasks, probs, kind, horizon)
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)  # [T] or [T, S]
        if kind != "bandit":
            entropy = entropy.mean(-1)  # [T]: over states
        j_adapted = expected(tasks, action_probs(algo, adapted, tasks, kind), kind, horizon)
        uniform = (torch.full_like(tasks["probs"], 1.0 / family.arms) if kind == "bandit"
                   else torch.full_like(tasks["rewards"], 1.0 / family.actions))
        j_random = expected(tasks, uniform, kind, horizon)
        j_oracle = (tasks["probs"].amax(-1) * horizon if kind == "bandit"
                    else optimal_value(tasks, horizon))
    rest = row.n - row.support
    columns = {"random": row.n * j_random, "theta_only": row.n * j_theta,
               "maml_trial": row.support * j_theta + rest * j_adapted,
               "adapted_times_n": row.n * j_adapted, "oracle": row.n * j_oracle,
               "support_observed": support.returns().sum(-1), "theta_entropy": entropy}
    columns["gain"] = columns["maml_trial"] - columns["random"]  # paired, per task
    return {name: {"mean": float(v.double().mean()), "ci95": ci95(v.double())}
            for name, v in columns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--iterations", type=int, default=100,
                        help="MAML-TRPO outer steps per row (the recipes' own: 100)")
    parser.add_argument("--eval-tasks", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    add_output_options(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    results = []
    for name in args.rows:
        row = ROWS[name]
        recipe = recipe_of(row, args)
        kind = "bandit" if recipe.dataset == "rl_bandit" else "tabular"
        algo = build_rl_algorithm(recipe)
        untrained = evaluate(algo, recipe, row, kind, args.eval_tasks)
        seconds, history = train(algo, recipe)
        scores = evaluate(algo, recipe, row, kind, args.eval_tasks)
        log.info("%s: %.0f s; trial %.2f (theta only %.2f, untrained %.2f)", name, seconds,
                 scores["maml_trial"]["mean"], scores["theta_only"]["mean"],
                 untrained["maml_trial"]["mean"])
        results.append({"row": name, "table": row.table, "recipe": row.recipe,
                        "overrides": {**row.overrides, "trajectories": row.support,
                                      "iterations": args.iterations},
                        "n": row.n, "support": row.support, "train_seconds": seconds,
                        "scores": scores, "untrained": untrained, "history": history})
    lines = [
        f"Machine: {machine()}; load average {load_average()} (shared machine, 1 thread).",
        f"MAML-TRPO, {args.iterations} outer steps of 20 tasks per row (shipped recipes, "
        "one inner step at their inner rate 0.5); a trial of n interactions = n//2 with the "
        "meta-learned policy (the support set), one policy-gradient step, the rest with the "
        f"adapted one. Total reward per trial, mean +- 95% CI over {args.eval_tasks} held-out "
        "tasks (exact expected returns given the sampled support set).", "",
        "| row (RL^2 paper) | random | MAML, no adaptation | MAML trial (n//2 + step + rest) "
        "| MAML trial - random (paired) | adapted policy x n | oracle (knows the task) "
        "| random (paper) | RL^2 (paper) | theta's entropy (nats) | train s |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["scores"]
        cells = [f"{s[c]['mean']:.2f} +- {s[c]['ci95']:.2f}" for c in
                 ("random", "theta_only", "maml_trial", "gain", "adapted_times_n", "oracle")]
        lines.append(f"| {r['table']} | " + " | ".join(cells)
                     + " | {:.1f} | {:.1f}".format(*PAPER[r["row"]])
                     + f" | {s['theta_entropy']['mean']:.2f} "
                     f"| {r['train_seconds']:.0f} |")
    block = "\n".join(lines)
    print(block)
    heading = "Bandits and tabular MDPs against RL^2's rows"
    if args.iterations < 50:
        name, heading = "rl_rl2_rows_smoke", f"{heading}: smoke run"
    elif args.iterations == 100:  # the recipes' own length
        name = "rl_rl2_rows"
    else:
        name, heading = f"rl_rl2_rows_{args.iterations}it", \
            f"{heading}, {args.iterations} outer steps"
    publish(args, name, heading, block, results)


if __name__ == "__main__":
    main()
