"""The algorithm contract shared by every meta-learner, and the adapted-model `Learner`.

An :class:`Algorithm` is an ``nn.Module`` that holds all meta-parameters (the model, plus
e.g. Meta-SGD's learned rates), so ``named_parameters()`` / ``state_dict()`` describe it
completely. It never writes ``.grad`` and never steps: :meth:`Algorithm.meta_gradients`
returns gradients keyed like ``named_parameters()`` and the trainer applies any torch
optimizer to them.

Subclasses supply the maths as functions of one task or one batch; how a meta-batch runs
(task by task, on worker threads, vmapped, captured as a CUDA graph) is decided apart, by
:mod:`metafit.execution`, from the :class:`~metafit.execution.Execution` given at
construction:

* ``task_loss(support_x, support_y, query_x, query_y) -> (loss, query_out)``: the outer
  loss of one task with its graph back to the meta-parameters (or override
  ``task_gradients`` where the update is not a gradient, as Reptile's);
* ``batch_loss(episodes, chunk_size) -> (loss, scores)``: the same over a whole batch at
  once, for algorithms that declare a ``batch_form`` (or override ``batch_gradients``);
* ``trajectory(support_x, support_y, steps, query_x) -> iterator of (params, query_out)``:
  graph-free adaptation yielding after 0..steps steps, from which ``adapt`` (the last item)
  and ``adaptation_curve`` (every item) are derived, so both share one code path.

What an algorithm can do is declared on its class (the capabilities below), where the
registry, the recipes, the executor and the deployment read it; nothing outside
:mod:`metafit.algorithms` lists algorithm names. ``meta_loss`` of the base class, one graph
over the looped tasks, is the independent formulation the tests compare against.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, cast

import torch
from torch import Tensor, nn

from metafit import functional as mf
from metafit.algorithms.learner import Learner
from metafit.episodes import Episode, Episodes
from metafit.execution import plan, run
from metafit.execution.program import BatchForm, BatchResult, TaskResult, metric_values
from metafit.execution.settings import Execution
from metafit.functional import Params
from metafit.models.base import FewShotModel

__all__ = ["CAPABILITIES", "INITIAL_LOSS_SCALE", "Algorithm", "Learner"]

#: The first loss scale of an fp16 run (torch.amp.GradScaler's default, 2**16).
INITIAL_LOSS_SCALE = 2.0**16

#: The capability flags every algorithm class declares (see :class:`Algorithm`).
CAPABILITIES = ("meta_trained", "episodic_training", "supports_regression", "fixed_head",
                "accepts_classifier", "adapts_with_steps", "graphable", "batch_form",
                "batch_on_cpu", "cheap_query_scores")


class Algorithm(nn.Module, ABC):
    """Base class of meta-learning algorithms (see the module docstring).

    Args:
        model: a :class:`~metafit.models.FewShotModel` (``body`` + ``head``), registered as
            the submodule ``model`` (so parameter names start with ``"model."``).
        inner_steps: inner steps during meta-training (0 where there is no inner loop).
        eval_inner_steps: default steps of :meth:`adapt`; ``None`` means ``inner_steps``.
        execution: how meta-batches run (:class:`~metafit.execution.Execution`; default:
            auto); it changes speed, never what is computed, except its ``precision``
            (bf16 / fp16 autocast, :mod:`metafit.execution.precision`).

    With ``precision="fp16"`` the algorithm holds ``loss_scale`` (a ``[]`` float32 buffer,
    not saved in ``state_dict``, initially :data:`INITIAL_LOSS_SCALE`): the outer loss is
    differentiated times it and the gradients divided by it in float32, so small
    gradients do not underflow in float16 (Micikevicius et al. 2018); the trainer
    adjusts it in place (:class:`metafit.training.optim.DynamicLossScale`), which a
    captured CUDA graph sees.
    """

    name: ClassVar[str] = "algorithm"
    loss_scale: Tensor | None
    # -- capabilities (class attributes; :data:`CAPABILITIES`) ---------------------------
    #: False for baselines with nothing to meta-train (the trainer then writes the run
    #: directory with the initial model and no steps).
    meta_trained: ClassVar[bool] = True
    #: Meta-training reports per-episode query metrics (False: pooled pretraining).
    episodic_training: ClassVar[bool] = True
    supports_regression: ClassVar[bool] = True
    #: Meta-training fixes the number of ways (a head of ``ways`` outputs); False where a
    #: task of any number of ways can be adapted to (prototypes, a head fitted per task).
    fixed_head: ClassVar[bool] = True
    #: Takes ``classifier=`` (a head fitted at test time on frozen features).
    accepts_classifier: ClassVar[bool] = False
    #: Adaptation takes inner steps (False: one closed-form fit, ``steps`` is ignored).
    adapts_with_steps: ClassVar[bool] = True
    #: Its meta-gradient reads nothing back from the device, so a CUDA graph can capture it.
    graphable: ClassVar[bool] = False
    #: Its whole-batch formulation (:data:`~metafit.execution.program.BatchForm`) or None.
    batch_form: ClassVar[BatchForm | None] = None
    #: Its batched form pays off on a CPU for models without convolutions.
    batch_on_cpu: ClassVar[bool] = False
    #: The trajectory scores the query set on features computed once (a head-only inner
    #: loop), so scoring every step costs next to nothing: sparse curves just subsample.
    cheap_query_scores: ClassVar[bool] = False

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        """The class's capability flags, ``{name: value}`` for :data:`CAPABILITIES`."""
        return {name: getattr(cls, name) for name in CAPABILITIES}

    @classmethod
    def check_batching(cls, batching: str) -> None:
        """Raise ``ValueError`` where ``batching`` (other than ``"auto"``) asks for a choice
        this class does not offer: only a per-task and a vmapped form give one."""
        if batching == "auto" or cls.batch_form == "vmap":
            return
        raise ValueError(f"batching={batching!r} applies to algorithms with a per-task and a "
                         f"vmapped form; {cls.__name__} has {cls.batch_form or 'only a per-task'}"
                         " form (leave batching auto)")

    def __init__(
        self, model: nn.Module, inner_steps: int = 0, eval_inner_steps: int | None = None,
        execution: Execution | None = None,
    ) -> None:
        super().__init__()
        for label, value in (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{label} must be a non-negative integer, got {value!r}")
        self.model = cast(FewShotModel, model)  # any module with .body / .head
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.execution = Execution() if execution is None else execution
        type(self).check_batching(self.execution.batching)
        if self.execution.precision == "fp16":
            self.register_buffer("loss_scale", torch.tensor(INITIAL_LOSS_SCALE),
                                 persistent=False)
        else:
            self.loss_scale = None

    @property
    def second_order(self) -> bool:
        """Whether the meta-gradient differentiates through inner gradients."""
        return False

    @property
    def default_eval_steps(self) -> int:
        """Steps :meth:`adapt` takes when not told: ``eval_inner_steps`` or ``inner_steps``."""
        return self.inner_steps if self.eval_inner_steps is None else self.eval_inner_steps

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """``named_parameters()`` restricted to those with ``requires_grad``."""
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    # -- meta-training -------------------------------------------------------------------
    def task_loss(
        self, support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Outer loss of one task (scalar, with graph) and the query outputs ``[N*Q, out]``.

        ``support_x [N*K, *x]``, ``support_y [N*K]``, ``query_x [N*Q, *x]``,
        ``query_y [N*Q]``.
        """
        raise NotImplementedError(f"{type(self).__name__} defines meta_gradients directly")

    def batch_loss(self, episodes: Episodes, chunk_size: int | None
                   ) -> tuple[Tensor, Tensor]:
        """Mean outer loss of the whole batch (scalar, with graph) and the scores ``[T]``
        (or ``[1]`` for a pooled loss); for algorithms with a ``batch_form``.
        ``chunk_size``: tasks per vectorised call (``None``: all)."""
        raise NotImplementedError(f"{type(self).__name__} has no whole-batch formulation")

    def meta_loss(self, episodes: Episodes) -> tuple[Tensor, dict[str, float]]:
        """Mean outer loss over the T tasks of ``episodes`` (scalar, with graph) and metrics,
        on the path :meth:`meta_gradients` takes: the batch function where it runs batched,
        else a loop over tasks, then the average (one graph, one backward)."""
        self.check_episodes(episodes)
        if self.runs_batched():
            loss, scores = self.batch_loss(episodes, self.execution.vmap_chunk)
            return loss, self.metrics(loss, scores, episodes.is_regression)
        losses: list[Tensor] = []
        scores_: list[Tensor] = []
        for task in episodes:
            loss, out = self.task_loss(task.support_x, task.support_y, task.query_x, task.query_y)
            losses.append(loss)
            scores_.append(mf.score(out.detach(), task.query_y))
        loss = torch.stack(losses).mean()  # []
        return loss, self.metrics(loss, torch.stack(scores_), episodes.is_regression)

    def runs_batched(self) -> bool:
        """Whether meta-batches run through the whole-batch function
        (:func:`metafit.execution.plan.runs_batched`)."""
        return plan.runs_batched(self, self.execution)

    def meta_gradients(self, episodes: Episodes) -> tuple[dict[str, Tensor], dict[str, float]]:
        """Gradients of the mean outer loss, keyed like :meth:`trainable_parameters`
        (zeros where the loss does not depend on a parameter), and metrics
        (``{"loss", "accuracy"}`` or ``{"loss", "mse"}``), run as ``self.execution`` says
        (:func:`metafit.execution.meta_gradients`). Writes no ``.grad``."""
        return run.meta_gradients(self, episodes, self.execution)

    def batch_gradients(self, episodes: Episodes, chunk_size: int | None) -> BatchResult:
        """The whole batch's share of :meth:`meta_gradients`: gradients of
        :meth:`batch_loss`, the loss and the scores."""
        loss, scores = self.batch_loss(episodes, chunk_size)
        return self.gradients_of(loss), loss, scores

    def task_gradients(self, task: Episode) -> TaskResult:
        """One task's share of :meth:`meta_gradients`: the gradients of its outer loss
        (keyed like :meth:`trainable_parameters`), the loss and the query score (scalars,
        detached). Its graph is freed before the next task starts."""
        loss, out = self.task_loss(task.support_x, task.support_y, task.query_x, task.query_y)
        return self.gradients_of(loss), loss.detach(), mf.score(out.detach(), task.query_y)

    def gradients_of(self, loss: Tensor) -> dict[str, Tensor]:
        """``d loss / d p`` for every trainable parameter (zeros where unused); with a
        ``loss_scale`` (fp16), ``d (scale * loss) / d p`` divided by the scale (an
        overflow stays infinite, for the trainer to see)."""
        params = self.trainable_parameters()
        scale = self.loss_scale
        grads = torch.autograd.grad(
            loss, list(params.values()), allow_unused=True, materialize_grads=True,
            grad_outputs=None if scale is None else scale.to(loss.dtype),
        )
        if scale is not None:
            return {n: g.detach() / scale for n, g in zip(params, grads, strict=True)}
        return {n: g.detach() for n, g in zip(params, grads, strict=True)}

    @staticmethod
    def metrics(loss: Tensor, scores: Tensor, is_regression: bool) -> dict[str, float]:
        """``{"loss": mean loss, "accuracy" | "mse": mean of the per-task scores [T]}``,
        read back as floats (:func:`~metafit.execution.program.metric_values`)."""
        return {k: float(v) for k, v in metric_values(loss, scores, is_regression).items()}

    def check_episodes(self, episodes: Episodes) -> None:
        """Raise ``ValueError`` for a batch this algorithm cannot handle."""
        if episodes.is_regression and not self.supports_regression:
            raise ValueError(f"{type(self).__name__} does not support regression tasks")

    # -- adaptation ----------------------------------------------------------------------
    @abstractmethod
    def trajectory(
        self, support_x: Tensor, support_y: Tensor, steps: int, query_x: Tensor | None = None
    ) -> Iterator[tuple[Params, Tensor | None]]:
        """Graph-free adaptation to one task: yields ``(params_s, query_out_s)`` for
        s = 0..steps (``query_out_s [N*Q, out]`` or ``None`` without ``query_x``)."""

    def make_learner(self, params: Params, support_y: Tensor, copy: bool = True) -> Learner:
        """The callable for adapted ``params`` (default: the model with those params);
        ``copy`` as in :class:`Learner`."""
        return Learner(self.model, params, copy)

    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> Learner:
        """Adapt to one task (``support_x [N*K, *x]``, ``support_y [N*K]``) for ``steps``
        steps (default :attr:`default_eval_steps`) and return the adapted :class:`Learner`."""
        n_steps = self.default_eval_steps if steps is None else int(steps)
        if support_y.is_floating_point() and not self.supports_regression:
            raise ValueError(f"{type(self).__name__} does not support regression tasks")
        params, _ = mf.final(self.trajectory(support_x, support_y, n_steps))
        return self.make_learner(params, support_y)

    def adaptation_curve(
        self, episodes: Episodes, steps: int, at: Sequence[int] | None = None
    ) -> Tensor:
        """Query metric of each task after 0..``steps`` inner steps: ``[T, steps+1]``
        (accuracy for classification, MSE for regression), or only after the steps listed
        in ``at`` (increasing, each in 0..steps): ``[T, len(at)]``. One adaptation per
        task, no outer graph; with ``at``, the query set is scored only at those steps
        (through :meth:`make_learner`), which is what makes long adaptations affordable.
        """
        self.check_episodes(episodes)
        if at is not None and (list(at) != sorted(set(at)) or not at
                               or at[0] < 0 or at[-1] > steps):
            raise ValueError(f"at={list(at)} must be increasing steps within 0..{steps}")
        wanted = set(at or ())
        rows: list[Tensor] = []
        with torch.no_grad():
            for task in episodes:
                if at is None or self.cheap_query_scores:
                    curve = [
                        mf.score(out, task.query_y)  # []
                        for _, out in self.trajectory(
                            task.support_x, task.support_y, steps, task.query_x
                        )
                        if out is not None
                    ]
                else:
                    curve = [  # each learner is used at once, before the next step
                        mf.score(self.make_learner(params, task.support_y, copy=False)(
                            task.query_x), task.query_y)
                        for s, (params, _) in enumerate(
                            self.trajectory(task.support_x, task.support_y, steps))
                        if s in wanted
                    ]
                if at is not None and self.cheap_query_scores:
                    curve = [curve[s] for s in at]
                rows.append(torch.stack(curve))  # [steps+1] or [len(at)]
        return torch.stack(rows)  # [T, steps+1] or [T, len(at)]
