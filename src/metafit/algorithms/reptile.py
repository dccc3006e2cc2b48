"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Per task: k plain SGD steps from theta on the task's data give theta_adapted (no graph is
kept). The meta-"gradient" is ``theta - theta_adapted`` averaged over the tasks, so an outer
SGD step with learning rate epsilon is the Reptile update
``theta + epsilon * mean(theta_adapted - theta)``; any other torch optimizer may be used on
it as well (the paper uses Adam for the outer step in some experiments).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from metafit import functional as mf
from metafit.algorithms.base import Algorithm
from metafit.algorithms.registry import register_algorithm
from metafit.episodes import Episodes
from metafit.functional import Params

__all__ = ["Reptile"]

_MODEL = "model."


@register_algorithm("reptile")
class Reptile(Algorithm):
    """Reptile.

    Args:
        model: a ``FewShotModel``.
        inner_lr: step size of the inner plain SGD (the paper uses Adam with beta1 = 0; plain
            SGD keeps the update a pure function with no optimizer state).
        inner_steps: k, inner steps per task during meta-training.
        inner_batch: examples per inner step, taken cyclically from the task's data (which
            the sampler has already shuffled); ``None``: full batch.
        eval_inner_steps: default steps of ``adapt``.
        use_query: meta-train the inner loop on support + query examples (the paper draws
            its inner minibatches from all of a task's training examples); default
            ``False``: support only, so the query metrics measure generalisation.

    Metrics of :meth:`meta_gradients` are the query loss / accuracy (MSE) of the adapted
    parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        inner_batch: int | None = None,
        eval_inner_steps: int | None = None,
        use_query: bool = False,
    ) -> None:
        super().__init__(model, inner_steps, eval_inner_steps)
        if inner_batch is not None and inner_batch < 1:
            raise ValueError(f"inner_batch must be positive or None, got {inner_batch}")
        self.inner_lr = float(inner_lr)
        self.inner_batch = inner_batch
        self.use_query = bool(use_query)

    def adapted_names(self) -> list[str]:
        """Trainable parameters of ``self.model`` (names relative to it)."""
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def trajectory(
        self, support_x: Tensor, support_y: Tensor, steps: int, query_x: Tensor | None = None
    ) -> Iterator[tuple[Params, Tensor | None]]:
        """Plain SGD on ``support_x [B, *x]``, minibatches of ``inner_batch``."""
        yield from mf.adaptation_trajectory(
            self.model, dict(self.model.named_parameters()), support_x, support_y, steps,
            lr=self.inner_lr, adapt_names=self.adapted_names(), query_x=query_x,
            batch_size=self.inner_batch,
        )

    def meta_gradients(self, episodes: Episodes) -> tuple[dict[str, Tensor], dict[str, float]]:
        """``theta - theta_adapted`` averaged over the T tasks, keyed like
        ``trainable_parameters()``, and the query metrics after adaptation."""
        self.check_episodes(episodes)
        trainable = self.trainable_parameters()
        theta = {n[len(_MODEL):]: p.detach() for n, p in trainable.items() if n.startswith(_MODEL)}
        deltas = {n: torch.zeros_like(p) for n, p in theta.items()}
        losses: list[Tensor] = []
        scores: list[Tensor] = []
        for task in episodes:
            x, y = task.support_x, task.support_y  # [N*K, *x], [N*K]
            if self.use_query:
                x = torch.cat([x, task.query_x])  # [N*(K+Q), *x]
                y = torch.cat([y, task.query_y])  # [N*(K+Q)]
            adapted, out = mf.final(self.trajectory(x, y, self.inner_steps, task.query_x))
            assert out is not None  # [N*Q, out]
            for n in deltas:
                deltas[n] += theta[n] - adapted[n]  # [*param]
            losses.append(mf.loss_fn(out, task.query_y))
            scores.append(mf.score(out, task.query_y))
        t = float(len(episodes))
        grads = {
            n: (deltas[n[len(_MODEL):]] / t if n.startswith(_MODEL) else torch.zeros_like(p))
            for n, p in trainable.items()
        }
        loss = torch.stack(losses).mean()  # []
        return grads, self.metrics(loss, torch.stack(scores), episodes.is_regression)
