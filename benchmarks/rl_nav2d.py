"""MAML-TRPO on 2D navigation (Finn et al. 2017, sec. 5.3 and Figure 4), against a policy
pretrained on all tasks and a random initialisation, each fine-tuned with the same inner
steps on fixed held-out tasks.

    python benchmarks/rl_nav2d.py                      # the reference configuration
    python benchmarks/rl_nav2d.py --outer-steps 5      # a smoke run (minutes)
    python benchmarks/rl_nav2d.py --normalize-actions --inner-lr 0.5 --outer-steps 100 \
        --name rl_nav2d_paper                          # the authors' released configuration

Reference configuration (pytorch-maml-rl's ``2d-navigation.yaml``): 20 tasks x 20
trajectories per outer step, horizon 100, Gaussian policy 64-64 tanh, inner rate 0.1 and 1
inner step, gamma 0.99, GAE lambda 1, TRPO with max_kl 0.01, 10 conjugate-gradient
iterations (damping 1e-5), line search 15 x 0.8, 500 outer steps.

The authors' released configuration (cbfinn/maml_rl, ``sens_trpo_point.py`` and the run
behind the paper's figure, ``trposens1_fbs20_mbs20_flr_0.5metalr_0.01``): the same batches
and TRPO step, but actions normalised to the bound by rllab's ``normalize`` (here
``--normalize-actions``), inner rate 0.5 and 100 outer steps; their evaluation adapted on
4,000 time steps (40 or more trajectories) at 0.5, then 0.25 (``--eval-settings
0.5/0.5:40``).

Rows (``--rows``): ``maml`` (second order), ``fomaml`` (first order), ``pretrained`` (the same
TRPO on the same batches with no inner step: the policy that is best on average over
tasks), ``random`` (no training). Each is then adapted on ``--eval-tasks`` fixed tasks
(``TaskSampler(seed=--eval-seed).fixed``, a different stream from training) with
``--eval-steps`` policy-gradient steps at the inner rate, each step sampling
``--eval-trajectories`` trajectories with the parameters it starts from; the table gives
the mean undiscounted return after 0..k steps, +- the 95% CI over tasks (1.96 s /
sqrt(n)). All rows share the evaluation's random stream. The run also times the outer steps
(median seconds per step, split into sampling and the TRPO step) and extrapolates to
``--full-steps`` (500) outer steps. A run of 100 outer steps or more writes block
``rl_nav2d`` of RESULTS.md and rows ``rl_nav2d.json`` (each outer step's metrics included);
a shorter one is a smoke run: ``rl_nav2d_smoke``.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import torch
from common import add_output_options, load_average, machine, publish

from metafit.evaluation.protocol import ci95
from metafit.rl import (
    MAMLRL,
    GaussianMLPPolicy,
    Nav2d,
    TaskSampler,
    TRPOSettings,
    adaptation_returns,
    trpo_step,
)

log = logging.getLogger("rl_nav2d")
ROWS = ("maml", "fomaml", "pretrained", "random")


def make_algo(row: str, args: argparse.Namespace) -> MAMLRL:
    """The row's learner, its policy initialised from ``--seed`` (the same for every row)."""
    space = Nav2d().action_space
    scale = (space.high - space.low) / 2 if args.normalize_actions else 1.0
    policy = GaussianMLPPolicy(2, 2, hidden=tuple(args.hidden), action_scale=scale,
                               generator=torch.Generator().manual_seed(args.seed))
    steps = 0 if row == "pretrained" else args.inner_steps
    return MAMLRL(policy, inner_lr=args.inner_lr, inner_steps=steps,
                  first_order=row == "fomaml", gamma=args.gamma, gae_lambda=args.gae_lambda)


def train(algo: MAMLRL, args: argparse.Namespace) -> dict[str, Any]:
    """``--outer-steps`` TRPO steps on fresh batches of tasks; timings and last metrics."""
    family = Nav2d()
    tasks = TaskSampler(family, seed=args.seed)
    gen = torch.Generator().manual_seed(args.seed + 1)
    settings = TRPOSettings(max_kl=args.max_kl, cg_iters=args.cg_iters,
                            cg_damping=args.cg_damping)
    sample_s, step_s, history = [], [], []
    for step in range(args.outer_steps):
        t0 = time.perf_counter()
        episode = algo.sample(family.env(tasks.sample(args.tasks)), args.trajectories, gen)
        t1 = time.perf_counter()
        metrics = trpo_step(algo, episode, settings)
        t2 = time.perf_counter()
        sample_s.append(t1 - t0)
        step_s.append(t2 - t1)
        returns = episode.returns().mean(dim=0)  # [K+1]
        history.append({"step": step, "return_before": float(returns[0]),
                        "return_after": float(returns[-1]), **metrics})
        if step % args.log_every == 0 or step == args.outer_steps - 1:
            log.info("step %d: return %.1f -> %.1f, kl %.4f, %.1f s", step,
                     returns[0], returns[-1], metrics["kl_after"], t2 - t0)
    per_step = (statistics.median(sample_s) + statistics.median(step_s)) if sample_s else 0.0
    return {"sample_seconds": statistics.median(sample_s) if sample_s else 0.0,
            "trpo_seconds": statistics.median(step_s) if step_s else 0.0,
            "seconds_per_step": per_step, "train_seconds": sum(sample_s) + sum(step_s),
            "history": history}


def parse_setting(text: str) -> tuple[float, float, int]:
    """``LR:N`` or ``LR/DECAY:N`` -> (rate, decay after the first step, trajectories)."""
    rate, _, n = text.partition(":")
    lr, _, decay = rate.partition("/")
    try:
        setting = float(lr), float(decay or 1.0), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LR:N or LR/DECAY:N, got {text!r}") from None
    if not (setting[0] > 0 and setting[1] > 0 and setting[2] > 0):
        raise argparse.ArgumentTypeError(f"rate, decay and trajectories must be > 0: {text!r}")
    return setting


def evaluate(algo: MAMLRL, args: argparse.Namespace, lr: float, trajectories: int,
             decay: float = 1.0) -> dict[str, list[float]]:
    """Mean return and 95% CI over the held-out tasks after 0..``--eval-steps`` steps at
    rate ``lr`` (``lr * decay`` after the first), each on ``trajectories`` trajectories."""
    family = Nav2d()
    env = family.env(TaskSampler(family, seed=args.eval_seed).fixed(args.eval_tasks))
    adapter = MAMLRL(algo.policy, inner_lr=lr, inner_steps=args.eval_steps,
                     gamma=args.gamma, gae_lambda=args.gae_lambda, inner_lr_decay=decay)
    curve = adaptation_returns(adapter, env, args.eval_steps, trajectories,
                               torch.Generator().manual_seed(args.eval_seed + 1))  # [T, k+1]
    return {"mean": [float(c.mean()) for c in curve.T], "ci95": [ci95(c) for c in curve.T]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="*", default=["maml", "pretrained", "random"],
                        choices=ROWS)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--hidden", type=int, nargs="*", default=[64, 64])
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--inner-steps", type=int, default=1)
    parser.add_argument("--normalize-actions", action="store_true",
                        help="the policy in units of the action bound (rllab's normalize, "
                             "as in the MAML paper's released code; recipe key "
                             "normalize_actions)")
    parser.add_argument("--name", default=None,
                        help="the RESULTS.md block and rows file (default: rl_nav2d, or "
                             "rl_nav2d_smoke under 100 outer steps)")
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--gae-lambda", type=float, default=1.0)
    parser.add_argument("--max-kl", type=float, default=0.01)
    parser.add_argument("--cg-iters", type=int, default=10)
    parser.add_argument("--cg-damping", type=float, default=1e-5)
    parser.add_argument("--outer-steps", type=int, default=500)
    parser.add_argument("--full-steps", type=int, default=500,
                        help="outer steps the wall-time estimate extrapolates to")
    parser.add_argument("--eval-tasks", type=int, default=40)
    parser.add_argument("--eval-trajectories", type=int, default=20)
    parser.add_argument("--eval-settings", type=parse_setting, nargs="+", default=None,
                        metavar="LR[/DECAY]:N",
                        help="instead of --inner-lr and --eval-trajectories: these "
                             "(rate, rate multiplier after the first step, trajectories), "
                             "a row each")
    parser.add_argument("--eval-steps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-seed", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--log-every", type=int, default=10)
    add_output_options(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    rows = []
    settings = args.eval_settings or [(args.inner_lr, 1.0, args.eval_trajectories)]
    for row in args.rows:
        algo = make_algo(row, args)
        trained = train(algo, args) if row != "random" else {
            "sample_seconds": 0.0, "trpo_seconds": 0.0, "seconds_per_step": 0.0,
            "train_seconds": 0.0, "history": []}
        for i, (lr, decay, n) in enumerate(settings):
            then = f" then {lr * decay:g}" if decay != 1.0 else ""
            label = row if len(settings) == 1 else f"{row} (rate {lr:g}{then}, {n} traj.)"
            kept = trained if i == 0 else {**trained, "history": []}  # history stored once
            rows.append({"row": label, "eval_lr": lr, "eval_lr_decay": decay,
                         "eval_trajectories": n, **kept,
                         **evaluate(algo, args, lr, n, decay), "trained": row != "random",
                         "estimated_full_hours":
                             trained["seconds_per_step"] * args.full_steps / 3600})
    smoke = args.outer_steps < 100
    steps = range(args.eval_steps + 1)
    lines = [f"Machine: {machine()}; load average {load_average()} (shared machine).",
             f"Training: {args.outer_steps} outer steps of {args.tasks} tasks x "
             f"{args.trajectories} trajectories (horizon 100, policy {args.hidden} tanh, inner "
             f"rate {args.inner_lr}, {args.inner_steps} inner step(s), max_kl {args.max_kl}"
             f"{', actions normalised' if args.normalize_actions else ''}); "
             f"evaluation: {args.eval_tasks} fixed held-out tasks, "
             + ("the rate and trajectories per step of each row" if len(settings) > 1 else
                f"{settings[0][2]} trajectories per step at rate {settings[0][0]:g}")
             + ", return +- 95% CI over tasks.", "",
             "| row | " + " | ".join(f"return after {k} step(s)" for k in steps)
             + " | s per outer step (sampling + TRPO) | est. hours for "
             f"{args.full_steps} steps |",
             "|---|" + "---|" * (len(steps) + 2)]
    for r in rows:
        cells = [f"{m:.1f} +- {c:.1f}" for m, c in zip(r["mean"], r["ci95"], strict=True)]
        timing = (f"{r['seconds_per_step']:.2f} ({r['sample_seconds']:.2f} + "
                  f"{r['trpo_seconds']:.2f})" if r["trained"] else "-")
        hours = f"{r['estimated_full_hours']:.2f}" if r["trained"] else "-"
        lines.append(f"| {r['row']} | " + " | ".join(cells) + f" | {timing} | {hours} |")
    block = "\n".join(lines)
    print(block)
    name = args.name or ("rl_nav2d_smoke" if smoke else "rl_nav2d")
    heading = ("2D navigation (MAML-TRPO): smoke run" if smoke
               else "2D navigation (MAML-TRPO)")
    publish(args, name, heading, block, rows)


if __name__ == "__main__":
    main()
