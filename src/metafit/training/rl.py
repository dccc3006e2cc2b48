"""Meta-training a meta-RL recipe in the shared loop: MAML-TRPO (Finn et al. 2017, sec.
5.3), Reptile on policies (Nichol et al. 2018) and the baselines of the MAML paper's
Figure 4 (a policy pretrained on all tasks, a random one).

:class:`RLTrainer` is a :class:`~metafit.training.loop.TrainingLoop`: the run directory,
resume, records, validation, best/last checkpoints, time budget and callbacks are the
supervised trainer's. Its step is the meta-RL one (docs/rl.md): draw ``meta_batch`` tasks
from the recipe's family, sample ``trajectories`` per task with the policy, adapt with
the training inner steps (none for ``pretrained_trpo``), sample again with the adapted
policies, and take one outer step (:func:`outer_step`): TRPO on the meta-objective
(:class:`TRPOOuterStep`, ``maml_trpo``, ``fomaml_trpo``, ``pretrained_trpo``), the
Reptile update (:class:`ReptileOuterStep`, ``reptile_pg``) or ProMP's clipped PPO steps
with Adam (:class:`~metafit.rl.promp.ProMPOuterStep`, ``promp``, Rothfuss et al. 2019).
``scratch`` takes no step: its learner is not meta-trained, so the loop validates the
seeded initial policy once and saves it. Validation is the return after adaptation on
fixed validation tasks (:func:`~metafit.evaluation.rl.evaluate_rl`).

Every random draw of training comes from the :class:`~metafit.rl.TaskSampler`'s two
generators (tasks, rollouts), which a checkpoint saves with the policy; validation draws
from a fresh stream of its own. A run resumed from ``last.pt`` therefore samples the same
tasks and trajectories and logs the same metrics as an uninterrupted one.

Under ``torchrun`` the meta-batch's tasks are split across the processes
(:mod:`metafit.rl.shard`): every rank draws the whole batch from the same seeded sampler
(the one-process streams), rolls out and adapts its contiguous block of it, and the outer
step sums what it needs over the ranks, so every rank takes the same step. Validation
runs whole on every rank (the same fixed tasks and stream, so the same score); rank 0
writes the run directory, as for supervised runs.
"""

from __future__ import annotations

from typing import Any

from metafit.config.schema import Recipe
from metafit.distributed import all_reduce_mean_metrics, broadcast_module
from metafit.evaluation.rl import evaluate_rl
from metafit.rl.from_recipe import (
    build_family,
    build_rl_algorithm,
    promp_settings,
    trpo_settings,
)
from metafit.rl.maml import MAMLRL, MetaEpisode
from metafit.rl.promp import ProMPOuterStep
from metafit.rl.reptile import reptile_step
from metafit.rl.shard import TaskShard
from metafit.rl.trpo import TRPOSettings, trpo_step
from metafit.runs.checkpoints import Resumable
from metafit.runs.rl import rl_eval_steps, rl_sampler
from metafit.training.loop import TrainingLoop

__all__ = ["OuterStep", "ProMPOuterStep", "RLTrainer", "ReptileOuterStep", "TRPOOuterStep",
           "outer_step"]


class TRPOOuterStep:
    """The TRPO outer step, in the optimizer's place of a checkpoint
    (:class:`~metafit.runs.checkpoints.Resumable`): it writes the parameters itself and
    keeps no state from one step to the next, so its state is empty."""

    def __init__(self, settings: TRPOSettings) -> None:
        self.settings = settings

    def step(self, algo: MAMLRL, episode: MetaEpisode, shard: TaskShard | None = None
             ) -> dict[str, float]:
        """One TRPO step of ``algo``'s parameters on ``episode`` (this rank's block
        ``shard`` of the tasks under torchrun); its training-record metrics (``loss``
        before the step, ``loss_after``, ``kl``, ``step_fraction``,
        ``line_search_steps``, ``grad_norm``)."""
        m = trpo_step(algo, episode, self.settings, shard)
        return {"loss": m["loss_before"], "loss_after": m["loss_after"], "kl": m["kl_after"],
                "step_fraction": m["step_fraction"],
                "line_search_steps": m["line_search_steps"], "grad_norm": m["grad_norm"]}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        """Nothing to restore (see the class docstring)."""


class ReptileOuterStep:
    """The Reptile meta-update ``theta <- theta + epsilon * mean_t (theta_K[t] - theta)``
    (:func:`~metafit.rl.reptile.reptile_step`), in the optimizer's place of a checkpoint.
    Its step size is constant (the recipe's ``outer_lr``), so it keeps no state between
    steps and its state is empty: a resumed run takes the same steps."""

    def __init__(self, epsilon: float) -> None:
        self.epsilon = epsilon

    def step(self, algo: MAMLRL, episode: MetaEpisode, shard: TaskShard | None = None
             ) -> dict[str, float]:
        """One Reptile update of ``algo``'s policy from ``episode`` (this rank's block
        ``shard`` of the tasks under torchrun); its metrics (``step_norm``,
        ``adapted_distance``)."""
        return reptile_step(algo, episode, self.epsilon, shard)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any], /) -> None:
        """Nothing to restore (see the class docstring)."""


#: What :class:`RLTrainer` steps with: any of the outer steps.
OuterStep = TRPOOuterStep | ReptileOuterStep | ProMPOuterStep


def outer_step(recipe: Recipe, algo: MAMLRL | None = None) -> OuterStep:
    """The recipe's outer step: Reptile's for ``reptile_pg`` (step size ``outer_lr``),
    ProMP's for ``promp`` (Adam over ``algo``'s parameters, rate ``outer_lr``; ``algo`` is
    required then), else TRPO (:func:`~metafit.rl.from_recipe.trpo_settings`).

    Raises:
        ValueError: ``promp`` without ``algo``.
    """
    if recipe.algorithm == "reptile_pg":
        return ReptileOuterStep(recipe.outer_lr)
    if recipe.algorithm == "promp":
        if algo is None:
            raise ValueError("promp's outer step holds an Adam optimizer over the learner's "
                             "parameters: pass the learner (outer_step(recipe, algo))")
        return ProMPOuterStep(algo, promp_settings(recipe))
    return TRPOOuterStep(trpo_settings(recipe))


class RLTrainer(TrainingLoop):
    """Meta-trains a meta-RL ``recipe`` (datasets ``rl_nav2d``, ``rl_bandit``,
    ``rl_tabular``, ``rl_pendulum``) into the run directory ``out``; arguments as for
    :class:`~metafit.training.trainer.Trainer`; under ``torchrun`` (``dist``) the
    meta-batch's tasks are split across the ranks (module docstring).

    Training records hold, averaged over ``log_every`` steps, the outer step's metrics
    and ``return_before`` / ``return_after`` (the mean return of the training tasks'
    trajectories before and after adaptation). TRPO's: ``loss`` (the surrogate loss
    before the step), ``loss_after``, ``kl`` (mean KL between the query policies before
    and after the step), ``step_fraction`` and ``line_search_steps`` (0 and
    ``ls_max_steps``: no step was accepted), ``grad_norm``; Reptile's: ``step_norm`` and
    ``adapted_distance``. Validation records: ``return`` after adaptation and its
    ``ci95``.
    """

    algo: MAMLRL

    def _build(self) -> None:
        r = self.recipe
        if not r.is_rl:
            raise ValueError(f"dataset '{r.dataset}' is not a meta-RL task family; train it "
                             "with metafit.training.trainer.Trainer")
        # every rank draws the whole meta-batch (the one-process streams) and keeps a block
        self.shard = TaskShard.of(self.dist, r.meta_batch) if self.dist.enabled else None
        if self.shard is not None and r.algorithm == "promp":
            raise ValueError("promp does not run under torchrun yet (its Adam steps are not "
                             "all-reduced across processes); train it in one process")
        self.family = build_family(r)
        self.tasks = rl_sampler(r, "train", self.family)
        self.val_tasks = rl_sampler(r, "val", self.family)
        self.algo = build_rl_algorithm(r, self.family)
        broadcast_module(self.algo, self.dist)  # identical already (seeded); made sure
        self.outer = outer_step(r, self.algo)

    def _learner_name(self) -> str:
        r = self.recipe
        widths = "-".join(str(w) for w in r.policy_hidden)
        policy = f"{r.policy_activation} policy {widths}"
        if r.algorithm in ("maml_trpo", "fomaml_trpo"):
            return f"{r.algorithm} ({'first' if r.rl_first_order else 'second'} order), " \
                   f"{policy}"
        if r.algorithm == "reptile_pg":
            return f"reptile_pg ({r.inner_steps} inner steps, epsilon {r.outer_lr:g}), {policy}"
        if r.algorithm == "promp":
            return f"promp ({r.rl_inner_objective} inner loss, {r.ppo_steps} clipped PPO " \
                   f"steps, Adam {r.outer_lr:g}), {policy}"
        if r.algorithm == "pretrained_trpo":
            return f"pretrained_trpo (TRPO without inner steps), {policy}"
        return f"scratch (the seeded initial policy, not trained), {policy}"

    def _step(self) -> dict[str, float]:
        """One outer step on a fresh meta-batch of tasks: sample and adapt, then update."""
        r = self.recipe
        env = self.family.env(self.tasks.sample(r.meta_batch))
        episode = self.algo.sample(env, r.trajectories, self.tasks.rollouts, shard=self.shard)
        m = self.outer.step(self.algo, episode, self.shard)
        returns = episode.returns().mean(dim=0)  # [train inner steps + 1], over the block
        ret = {"return_before": float(returns[0]), "return_after": float(returns[-1])}
        if self.shard is not None:  # the means over the whole meta-batch
            ret = all_reduce_mean_metrics(ret, self.shard.size, r.meta_batch, self.dist)
        return {**m, **ret}

    def validate(self) -> dict[str, Any]:
        """The return after adaptation on the fixed validation tasks, with its 95% CI."""
        r = self.recipe
        result = evaluate_rl(self.algo, self.val_tasks, episodes=r.val_episodes,
                             steps=rl_eval_steps(r), trajectories=r.trajectories)
        return {result.metric: result.mean, "ci95": result.ci95}

    def _resumable(self) -> Resumable:
        params = list(self.algo.trainable_parameters().values())
        return Resumable(self.algo, self.outer, None, self.tasks, params, self.recipe, None)
