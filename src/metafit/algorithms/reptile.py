"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Per task: k plain SGD steps from theta on the task's data give theta_adapted (no graph is
kept). The meta-"gradient" is ``theta - theta_adapted`` averaged over the tasks, so an outer
SGD step with learning rate epsilon is the Reptile update
``theta + epsilon * mean(theta_adapted - theta)``; any other torch optimizer may be used on
it as well (the paper uses Adam for the outer step in some experiments).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor, nn

from metafit import functional as mf
from metafit.algorithms.base import Algorithm
from metafit.algorithms.registry import register_algorithm
from metafit.episodes import Episode, Episodes
from metafit.execution.program import BatchForm, BatchResult, TaskResult
from metafit.execution.settings import Execution
from metafit.functional import Params
from metafit.models.blocks import once_differentiable_region

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

        query_metrics: score the adapted parameters on the query set (one graph-free
            forward per task) for the training metrics; ``False`` skips that forward (the
            Reptile update never needs it) and reports the metrics as NaN.
        execution: how meta-batches run (:class:`~metafit.execution.Execution`).

    Metrics of :meth:`meta_gradients` are the query loss / accuracy (MSE) of the adapted
    parameters.
    """

    batch_form: ClassVar[BatchForm | None] = "vmap"
    batch_on_cpu = True

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        inner_batch: int | None = None,
        eval_inner_steps: int | None = None,
        use_query: bool = False,
        query_metrics: bool = True,
        execution: Execution | None = None,
    ) -> None:
        super().__init__(model, inner_steps, eval_inner_steps, execution)
        if inner_batch is not None and inner_batch < 1:
            raise ValueError(f"inner_batch must be positive or None, got {inner_batch}")
        self.inner_lr = float(inner_lr)
        self.inner_batch = inner_batch
        self.use_query = bool(use_query)
        self.query_metrics = bool(query_metrics)

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

    def _inner_examples(self, support_x: Tensor, support_y: Tensor, query_x: Tensor,
                        query_y: Tensor, axis: int) -> tuple[Tensor, Tensor]:
        """What the inner loop trains on: the support set, plus the query set with
        ``use_query``, joined along the examples ``axis`` (0 for one task, 1 for a batch)."""
        if not self.use_query:
            return support_x, support_y
        return (torch.cat([support_x, query_x], dim=axis),
                torch.cat([support_y, query_y], dim=axis))

    def batch_gradients(self, episodes: Episodes, chunk_size: int | None) -> BatchResult:
        """``theta - theta_adapted`` averaged over the tasks, adapted all at once under
        ``vmap`` (:func:`metafit.functional.batched_sgd`), the mean query loss and the
        scores ``[T]``; the same result as :meth:`task_gradients` per task (tested)."""
        x, y = self._inner_examples(episodes.support_x, episodes.support_y, episodes.query_x,
                                    episodes.query_y, axis=1)  # [T, N*K(+N*Q), *x], [T, N*K(+N*Q)]
        adapted = mf.batched_sgd(
            self.model, dict(self.model.named_parameters()), x, y, self.inner_steps,
            self.inner_lr, adapt_names=self.adapted_names(), batch_size=self.inner_batch,
            chunk_size=chunk_size,
        )  # adapted names: [T, *param]
        names = set(self.adapted_names())
        grads = {
            n: ((p.detach() - adapted[n[len(_MODEL):]].mean(0)) if n[len(_MODEL):] in names
                else torch.zeros_like(p))  # [*param]
            for n, p in self.trainable_parameters().items()
        }
        if not self.query_metrics:
            nan = torch.tensor(float("nan"))
            return grads, nan, nan.expand(len(episodes))
        with torch.no_grad():
            outs = torch.func.vmap(
                lambda p, qx: mf.forward(self.model, {**adapted, **p}, qx),
                chunk_size=chunk_size,
            )({n: adapted[n] for n in names}, episodes.query_x)  # [T, N*Q, out]
        losses = torch.stack([mf.loss_fn(o, q) for o, q in zip(outs, episodes.query_y,
                                                               strict=True)])  # [T]
        scores = torch.stack([mf.score(o, q) for o, q in zip(outs, episodes.query_y,
                                                             strict=True)])  # [T]
        return grads, losses.mean(), scores  # {..}, [], [T]

    def task_gradients(self, task: Episode) -> TaskResult:
        """One task's share of the Reptile direction: ``theta - theta_adapted`` for the
        model's parameters (zeros for any others), and the adapted query loss and score.
        No outer graph: the adaptation is graph-free (``adaptation_trajectory``)."""
        x, y = self._inner_examples(task.support_x, task.support_y, task.query_x,
                                    task.query_y, axis=0)  # [N*K(+N*Q), *x], [N*K(+N*Q)]
        adapted, _ = mf.final(self.trajectory(x, y, self.inner_steps))
        grads = {
            n: (p.detach() - adapted[n[len(_MODEL):]] if n.startswith(_MODEL)
                else torch.zeros_like(p))  # [*param]
            for n, p in self.trainable_parameters().items()
        }
        if not self.query_metrics:
            nan = torch.tensor(float("nan"))
            return grads, nan, nan
        with torch.no_grad(), once_differentiable_region():
            out = mf.forward(self.model, adapted, task.query_x)  # [N*Q, out]
        return grads, mf.loss_fn(out, task.query_y), mf.score(out, task.query_y)
