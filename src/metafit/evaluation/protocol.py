"""The evaluation protocol: many fixed test episodes, mean +- 95% confidence interval.

``evaluate(algo, sampler, episodes=600)`` adapts the algorithm on the support set of each
of the sampler's ``fixed(episodes)`` tasks and scores it on the query set: accuracy for
classification, mean squared error for regression. The 95% interval is
``1.96 * std / sqrt(n)`` over episodes (the convention of Finn et al. 2017 and Snell et al.
2017). The adaptation curve gives the metric after 0, 1, ..., S inner steps.

BatchNorm: models normalise with batch statistics (no running statistics). With
``batch_norm="batch"`` (the default here, and what validation during training uses) the
query set of a task is scored as one batch, so evaluation is *transductive* (query
statistics are shared across the query set of one task, as in the MAML paper's protocol).
``batch_norm="support"`` scores every query as a deployed model does
(:mod:`metafit.deploy.materialise`): normalised with the support set's statistics under the
adapted parameters, independently of the other queries
(:mod:`metafit.evaluation.batch_norm`). Results say which (``"none"``: the model has no
BatchNorm, and both settings are the same).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from metafit.data.sampler import EpisodeSampler
from metafit.distributed import SINGLE, DistContext, all_gather_object, shard
from metafit.episodes import Episodes
from metafit.evaluation.batch_norm import deployed_logits, has_batch_norm
from metafit.evaluation.feature_cache import cached_body
from metafit.functional import loss_fn, score

__all__ = ["EvalResult", "Scores", "evaluate", "ci95", "scratch_baseline", "curve_points",
           "deployed_curve", "BatchNormSetting"]

#: How evaluation normalises the query inputs of models with BatchNorm: ``"batch"`` (the
#: query set's statistics, transductive) or ``"support"`` (the support set's: deployed).
BatchNormSetting = Literal["batch", "support"]


def curve_points(steps: int, dense: int = 10) -> list[int]:
    """Inner steps at which the adaptation curve is scored: every step up to ``dense``
    steps; beyond that 0, 1, 2, 3, 5, then five evenly spaced steps up to ``steps`` (scoring
    the query set after each of 50 or 100 steps would cost more than the adaptation)."""
    if steps <= dense:
        return list(range(steps + 1))
    grid = {round(steps * i / 5) for i in range(1, 6)}
    return sorted({0, 1, 2, 3, 5} | grid)


def ci95(values: Tensor) -> float:
    """Half-width of the 95% normal confidence interval of the mean: 1.96 s / sqrt(n)."""
    n = values.numel()
    if n < 2:
        return float("nan")
    return float(1.96 * values.double().std(unbiased=True) / math.sqrt(n))


@dataclass
class Scores:
    """Mean and 95% CI of ``metric`` over ``episodes`` fixed test tasks: what every
    evaluation reports (supervised episodes here, meta-RL tasks in
    :mod:`metafit.evaluation.rl`).

    ``per_episode [episodes]``: the metric of each task after ``steps`` inner steps.
    ``curve [P]`` / ``curve_ci95 [P]``: mean (and CI) after each scored number of inner
    steps (``curve_steps``, in the subclasses).
    """

    metric: str
    mean: float
    ci95: float
    episodes: int
    steps: int
    per_episode: list[float]
    curve: list[float]
    curve_ci95: list[float]


@dataclass
class EvalResult(Scores):
    """:class:`Scores` of supervised episodes: ``curve_steps [P]`` are 0..steps, all of
    them for short adaptations (see :func:`curve_points`); ``ways``, ``shots`` and
    ``queries`` describe the episodes."""

    ways: int
    shots: int
    queries: int
    transductive: bool = True  # batch_norm == "batch"
    curve_steps: list[int] = field(default_factory=list)  # the step of each curve point
    extra: dict[str, Any] = field(default_factory=dict)
    #: the queries' BatchNorm statistics: "batch" (query set, transductive), "support"
    #: (the support set's, as deployed) or "none" (the model has no BatchNorm)
    batch_norm: str = "batch"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """``"accuracy 97.12% +- 0.45 (600 episodes, 5-way 1-shot, 3 steps)"``."""
        scale, unit = (100.0, "%") if self.metric == "accuracy" else (1.0, "")
        task = (f"{self.ways}-way {self.shots}-shot" if self.metric == "accuracy"
                else f"{self.shots}-shot")
        return (f"{self.metric} {self.mean * scale:.2f}{unit} +- {self.ci95 * scale:.2f} "
                f"({self.episodes} episodes, {task}, {self.steps} steps)")


def evaluate(
    algo: Any,
    sampler: EpisodeSampler,
    episodes: int = 600,
    steps: int | None = None,
    batch: int = 50,
    progress: bool = False,
    desc: str = "evaluating",
    dist: DistContext = SINGLE,
    points: Sequence[int] | None = None,
    cache_features: bool = True,
    batch_norm: BatchNormSetting = "batch",
) -> EvalResult:
    """Evaluate ``algo`` on ``sampler.fixed(episodes)``.

    Args:
        algo: a registered algorithm (``adaptation_curve(episodes, steps) -> [T, steps+1]``).
        sampler: gives the fixed test episodes (same tasks for every algorithm).
        episodes: number of test tasks (600 in the papers).
        steps: inner steps at test time (default: the algorithm's evaluation default).
        batch: tasks adapted per call, to bound memory.
        progress: a progress bar (tasks) on stderr.
        dist: in a distributed run, every rank scores its contiguous block of the same
            fixed episodes and the per-episode scores are gathered to every rank, so each
            gets the result of the whole set (equal to one process's up to float noise).
        points: the inner steps at which the query set is scored (the adaptation curve;
            the last must be ``steps``, the reported result). Default:
            :func:`curve_points`, every step up to 10. Each point is one forward pass of
            the query set, so ``[0, steps]`` needs 2 passes instead of ``steps + 1``, with
            the same result: what dominates evaluating an inner-loop method on a large
            encoder, whose query sets are larger than its support sets.
        cache_features: when the body maps each example on its own, compute its features
            of each distinct example once for all the passes that use the body's own
            parameters (:mod:`metafit.evaluation.feature_cache`: all of them when adaptation leaves
            the body fixed; the same result up to float rounding). Classification only
            (regression inputs do not recur). ``False`` runs the body every time.
        batch_norm: ``"batch"``: each query set is one batch with its own BatchNorm
            statistics (transductive); ``"support"``: each query is normalised with the
            support set's statistics, as the model ``metafit adapt`` deploys scores it
            (:func:`deployed_curve`; a forward pass of support + queries per scored step).
            Models without BatchNorm are scored the same either way (``"none"``).

    Raises:
        ValueError: ``points`` outside ``0..steps`` or without ``steps``; an unknown
            ``batch_norm``.
    """
    if batch_norm not in ("batch", "support"):
        raise ValueError(f"batch_norm must be 'batch' or 'support', got {batch_norm!r}")
    if steps is None:
        steps = int(algo.default_eval_steps)
    tasks = sampler.fixed(episodes)
    chosen = _points(steps, points)
    at = None if len(chosen) == steps + 1 else chosen
    mine = shard(episodes, dist.rank, dist.world_size)
    setting = batch_norm if has_batch_norm(algo.model) else "none"
    was_training = algo.training
    algo.eval()
    cache = (cached_body(algo.model) if cache_features and not tasks.is_regression
             else nullcontext())
    if setting == "support":
        def scores(chunk: Episodes) -> Tensor:
            return deployed_curve(algo, chunk, steps, at)
    else:
        def scores(chunk: Episodes) -> Tensor:
            return algo.adaptation_curve(chunk, steps, at=at)  # type: ignore[no-any-return]
    with cache:
        curves = _curves(algo, scores, tasks, mine, len(chosen), batch, desc,
                         show=progress and dist.is_main)
    algo.train(was_training)
    curve = torch.cat(all_gather_object(curves, dist))  # [episodes, P], in order
    result = _result(curve, sampler, tasks.is_regression, steps, chosen)
    result.batch_norm, result.transductive = setting, setting == "batch"
    return result


def deployed_curve(algo: Any, episodes: Episodes, steps: int,
                   at: Sequence[int] | None = None) -> Tensor:
    """:meth:`~metafit.algorithms.base.Algorithm.adaptation_curve` with every query
    scored as the deployed model scores it: after adaptation, each query is normalised at
    every BatchNorm layer with the support set's statistics under the adapted parameters
    (:func:`~metafit.evaluation.batch_norm.deployed_logits`), so its score depends on it
    alone. The adaptation itself is the algorithm's (support-set batch statistics).
    ``[T, steps+1]``, or ``[T, len(at)]`` after the steps ``at``."""
    algo.check_episodes(episodes)
    wanted = set(range(steps + 1) if at is None else at)
    rows: list[Tensor] = []
    with torch.no_grad():
        for task in episodes:
            curve = [  # each learner is used at once, before the next step
                score(deployed_logits(algo.model,
                                      algo.make_learner(params, task.support_y, copy=False),
                                      task.support_x, task.query_x), task.query_y)  # []
                for s, (params, _) in enumerate(
                    algo.trajectory(task.support_x, task.support_y, steps))
                if s in wanted
            ]
            rows.append(torch.stack(curve))  # [P]
    return torch.stack(rows)  # [T, P]


def _points(steps: int, points: Sequence[int] | None) -> list[int]:
    """The sorted inner steps to score (default :func:`curve_points`), checked."""
    chosen = curve_points(steps) if points is None else sorted({int(s) for s in points})
    if not chosen or chosen[0] < 0 or chosen[-1] != steps:
        raise ValueError(f"evaluation points must lie in 0..{steps} and end with {steps} "
                         f"(the reported step), got {chosen}")
    return chosen


def _curves(algo: Any, scores: Callable[[Episodes], Tensor], tasks: Any, mine: range,
            width: int, batch: int, desc: str, show: bool) -> Tensor:
    """The metric of the episodes ``mine`` of ``tasks`` after each scored step
    (``scores(chunk) -> [t, width]``), adapted ``batch`` at a time: ``[len(mine), width]``
    float64 on the CPU; ``show``: a progress bar titled ``desc``."""
    from tqdm.auto import tqdm

    device = next(algo.parameters(), torch.empty(0)).device  # the episodes go where algo is
    curves = [torch.empty(0, width, dtype=torch.float64)]  # [0, P]: a rank may get none
    with tqdm(total=len(mine), desc=desc, unit="task", disable=not show,
              leave=False) as progress:
        for start in range(mine.start, mine.stop, batch):
            chunk = tasks[start : min(start + batch, mine.stop)].to(device)
            curves.append(scores(chunk).detach().double().cpu())
            progress.update(curves[-1].shape[0])  # curves[-1]: [t, P]
    return torch.cat(curves)  # [len(mine), P]


def _result(curve: Tensor, sampler: EpisodeSampler, is_regression: bool, steps: int,
            points: list[int] | None = None) -> EvalResult:
    """An :class:`EvalResult` from per-episode metrics ``curve [episodes, P]`` scored after
    ``points`` inner steps (default 0..steps)."""
    final = curve[:, -1]  # [episodes]
    return EvalResult(
        metric="mse" if is_regression else "accuracy",
        mean=float(final.mean()),
        ci95=ci95(final),
        episodes=int(curve.shape[0]),
        steps=steps,
        per_episode=final.tolist(),
        curve=curve.mean(0).tolist(),
        curve_ci95=[ci95(curve[:, s]) for s in range(curve.shape[1])],
        ways=sampler.ways,
        shots=sampler.shots,
        queries=sampler.queries,
        curve_steps=list(range(steps + 1)) if points is None else list(points),
    )


def scratch_baseline(
    make_model: Any,
    sampler: EpisodeSampler,
    episodes: int = 600,
    steps: int = 50,
    lr: float = 0.01,
    seed: int = 0,
    progress: bool = False,
) -> EvalResult:
    """A network trained from scratch on each support set alone (no meta-training).

    For each fixed episode: a fresh ``make_model()`` (seeded ``seed + episode``), ``steps``
    full-batch Adam steps on the support set, scored on the query set. This is the floor
    every meta-learner must clear.
    """
    from tqdm.auto import tqdm

    tasks = sampler.fixed(episodes)
    scores = []
    for t in tqdm(range(episodes), desc="scratch", unit="task", disable=not progress,
                  leave=False):
        task = tasks[t]
        torch.manual_seed(seed + t)
        model = make_model()
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        for _ in range(steps):
            loss = loss_fn(model(task.support_x), task.support_y)  # []
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores.append(float(score(model(task.query_x), task.query_y)))
    values = torch.tensor(scores, dtype=torch.float64).unsqueeze(1)  # [episodes, 1]
    return _result(values, sampler, tasks.is_regression, steps, [steps])
