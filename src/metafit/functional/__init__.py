"""The inner loop as pure functions over parameter dicts (per task: :mod:`.inner`; T tasks
at once under ``vmap``: :mod:`.batched`).

A model is used only through :func:`torch.func.functional_call`: parameters are data
(``dict[str, Tensor]``), so adapting to a task maps one dict to another and never mutates,
clones or deep-copies a module. The loss is chosen by the task: cross-entropy for integer
labels (classification), mean squared error for float targets (regression).

Gradient-based adaptation (Finn et al. 2017, "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks")::

    theta_{s+1}[n] = theta_s[n] - rate(n, s) * d loss_support(theta_s) / d theta_s[n]

* second order: the inner gradient keeps its graph (``create_graph=True``), so the outer
  gradient differentiates through it (Hessian-vector products);
* first order (FOMAML): the inner gradient is detached; the adapted parameters still depend
  on the initial ones through the identity path ``theta_s -> theta_{s+1}``;
* ``rate(n, s)`` is the scalar ``lr``, or a learned tensor per parameter (Meta-SGD, Li et
  al. 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning"), or a learned
  scalar per parameter and step (LSLR of MAML++, Antoniou et al. 2019, "How to train your
  MAML").

Shapes: one task, no task axis: ``x [B, *x]``, ``y [B]`` (long) or ``[B, *y]`` (float).
"""

from metafit.functional.batched import batched_query_losses, batched_sgd, functional_descent
from metafit.functional.inner import (
    Params,
    Rates,
    accuracy,
    adaptation_trajectory,
    descent,
    final,
    forward,
    inner_loop,
    inner_step,
    loss_fn,
    minibatch,
    score,
    sgd_update,
    step_rate,
    task_loss,
)

__all__ = [
    "Params",
    "Rates",
    "accuracy",
    "adaptation_trajectory",
    "batched_query_losses",
    "batched_sgd",
    "descent",
    "final",
    "forward",
    "functional_descent",
    "inner_loop",
    "inner_step",
    "loss_fn",
    "minibatch",
    "score",
    "sgd_update",
    "step_rate",
    "task_loss",
]
