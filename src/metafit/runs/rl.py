"""Read a meta-RL run back: its task samplers per split, its learner at a checkpoint, its
evaluation (the counterpart of :mod:`metafit.runs.trained` for the datasets ``rl_nav2d``,
``rl_bandit``, ``rl_tabular`` and ``rl_pendulum``).

The splits of a task family are seeds, as for the supervised samplers
(:data:`~metafit.runs.trained.SPLIT_SEED_OFFSET`): the trainer draws its training tasks
from ``TaskSampler(seed)``, validates on ``TaskSampler(seed + 1).fixed(val_episodes)`` and
``metafit evaluate`` tests on ``TaskSampler(seed + 2).fixed(test_episodes)``; with
continuous task parameters (2D goals, arm probabilities, transition tables) the three
share no task almost surely.
"""

from __future__ import annotations

from pathlib import Path

import torch

from metafit.config.schema import Recipe
from metafit.data.splits import Split
from metafit.evaluation.rl import RLEvalResult, evaluate_rl
from metafit.rl.env import MDPFamily
from metafit.rl.from_recipe import build_family, build_rl_algorithm
from metafit.rl.maml import MAMLRL
from metafit.rl.tasks import TaskSampler
from metafit.runs.directory import RunDir, check_architecture, load_checkpoint, restore_state
from metafit.runs.trained import SPLIT_SEED_OFFSET, check_count, record_evaluation

__all__ = ["evaluate_rl_run", "is_rl_run", "load_rl_trained", "rl_eval_steps", "rl_sampler"]


def is_rl_run(run: str | Path) -> bool:
    """Whether ``run`` holds a meta-RL run (anything unreadable: False, and left to the
    supervised path's own messages)."""
    try:
        return RunDir(run).read_recipe().is_rl
    except (OSError, ValueError):
        return False


def rl_sampler(recipe: Recipe, split: Split, family: MDPFamily | None = None) -> TaskSampler:
    """The task sampler of ``split`` for ``recipe``, seeded ``recipe.seed +
    SPLIT_SEED_OFFSET[split]`` (``family``: the recipe's, when already built)."""
    if split not in SPLIT_SEED_OFFSET:
        raise ValueError(f"unknown split '{split}'; choose one of "
                         f"{', '.join(SPLIT_SEED_OFFSET)}")
    family = build_family(recipe) if family is None else family
    return TaskSampler(family, seed=recipe.seed + SPLIT_SEED_OFFSET[split])


def rl_eval_steps(recipe: Recipe) -> int:
    """Adaptation steps of validation and evaluation: ``eval_inner_steps``, else
    ``inner_steps``."""
    return recipe.inner_steps if recipe.eval_inner_steps is None else recipe.eval_inner_steps


def load_rl_trained(run: str | Path, which: str = "best") -> tuple[Recipe, MAMLRL]:
    """The recipe and the MAML learner restored from ``run/checkpoints/{which}.pt`` (on the
    CPU). The checkpoint is read as every run's is (``torch.load(weights_only=True)``,
    digest-checked; :func:`~metafit.runs.directory.load_checkpoint`), and its shapes are
    compared with the recipe's policy built on the meta device first, so that a forged
    ``config.yaml`` cannot make this allocate without bound.

    Raises:
        FileNotFoundError: ``run`` is not a run directory.
        ValueError: ``run`` is a supervised run.
        CheckpointError: the checkpoint is missing, corrupt, unsafe, or of another policy.
    """
    rd = RunDir(run)
    recipe = rd.read_recipe()
    if not recipe.is_rl:
        raise ValueError(f"{run} is a supervised run (dataset '{recipe.dataset}'), not a "
                         "meta-RL one")
    path = rd.trained_checkpoint(which)
    ckpt = load_checkpoint(path)
    with torch.device("meta"):
        check_architecture(build_rl_algorithm(recipe), ckpt["algorithm"], str(path))
    algo = build_rl_algorithm(recipe)
    restore_state(algo, ckpt, str(path))
    algo.eval()
    return recipe, algo


def evaluate_rl_run(run: str | Path, split: Split = "test", episodes: int | None = None,
                    which: str = "best", steps: int | None = None) -> RLEvalResult:
    """Evaluate a meta-RL run on fixed tasks of ``split`` (:func:`rl_sampler`) after
    0..``steps`` adaptation steps (:func:`~metafit.evaluation.rl.evaluate_rl`) and save the
    result as ``run/report/eval_{split}_{which}_{steps}steps.json``.

    ``episodes``: tasks, None for the recipe's ``test_episodes``; ``steps``: None for
    :func:`rl_eval_steps` (0: the meta-learned policy alone).

    Raises:
        ValueError: ``episodes`` not a positive integer or ``steps`` a negative one, before
            any work; and the errors of :func:`load_rl_trained`.
    """
    check_count("episodes", episodes, default="the recipe's test_episodes")
    check_count("steps", steps, minimum=0, default="the recipe's evaluation steps")
    recipe, algo = load_rl_trained(run, which)
    result = evaluate_rl(algo, rl_sampler(recipe, split),
                         episodes=recipe.test_episodes if episodes is None else episodes,
                         steps=rl_eval_steps(recipe) if steps is None else steps,
                         trajectories=recipe.trajectories, family=recipe.dataset)
    return record_evaluation(run, result, recipe, split, which)
