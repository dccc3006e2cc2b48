"""The transfer-learning baseline: pretrain, then fit a new head on each task.

Classification (Chen et al. 2019, "A Closer Look at Few-shot Classification", Baseline;
Tian et al. 2020, "Rethinking Few-Shot Image Classification: a Good Embedding Is All You
Need?"): meta-training is plain supervised training of ``model.body`` + a
``num_classes``-way ``pretrain_head`` on every image of the batch (support and query) with
its *global* dataset class. At test time a new zero-initialised linear head (optionally with
the last ``finetune_layers`` blocks of the body) is fitted on the support set by full-batch
Adam for ``steps`` steps, on body features computed once; with ``classifier="logistic"``
a logistic regression on the L2-normalised features is instead fitted to convergence by
L-BFGS (Tian et al. 2020's head, :mod:`metafit.algorithms.heads`).

Regression: the "pretrained on all tasks" baseline of the MAML paper (Finn et al. 2017,
sec. 5.1): meta-training regresses every task's points jointly with the whole network;
``adapt`` fine-tunes all parameters by plain SGD at ``inner_lr`` for ``steps`` steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from metafit import functional as mf
from metafit.algorithms.base import Algorithm
from metafit.algorithms.heads import LogisticHead, check_classifier, logistic_trajectory
from metafit.algorithms.learner import Learner
from metafit.algorithms.registry import register_algorithm
from metafit.episodes import Episodes
from metafit.execution.program import BatchForm
from metafit.execution.settings import Execution
from metafit.functional import Params
from metafit.models.base import FewShotModel
from metafit.models.blocks import once_differentiable_region

__all__ = ["FineTune"]


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


@register_algorithm("finetune")
class FineTune(Algorithm):
    """Pretrain + fine-tune baseline.

    Args:
        model: a ``FewShotModel`` (``feature_dim`` = width of ``body``'s output).
        num_classes: classes of the pretraining head (the number of dataset classes the
            training episodes draw from); required for classification, unused for regression.
        inner_lr: step size of the test-time fit (Adam for the new head; SGD for regression).
        inner_steps: default number of test-time steps (100 as in Chen et al. 2019).
        finetune_layers: also fine-tune the last this many parametrised blocks of
            ``model.body`` (an ``nn.Sequential``) at test time; 0: frozen body.
        eval_inner_steps: overrides ``inner_steps`` for ``adapt``.
        classifier: ``None`` (the Adam-fitted linear head) or ``"logistic"``: a logistic
            regression on the L2-normalised body features, fitted to convergence by L-BFGS
            (:func:`~metafit.algorithms.heads.fit_logistic_head`; the number of steps and
            ``inner_lr`` do not apply to it). Needs ``finetune_layers=0``.
        penalty: the logistic head's L2 penalty on its weights.
    """

    episodic_training = False
    fixed_head = False
    accepts_classifier = True
    batch_form: ClassVar[BatchForm | None] = "pooled"
    cheap_query_scores = True  # query features are computed once per task

    def __init__(
        self,
        model: nn.Module,
        num_classes: int | None = None,
        inner_lr: float = 0.01,
        inner_steps: int = 100,
        finetune_layers: int = 0,
        eval_inner_steps: int | None = None,
        classifier: str | None = None,
        penalty: float = 1e-4,
        execution: Execution | None = None,
    ) -> None:
        super().__init__(model, inner_steps, eval_inner_steps, execution)
        if finetune_layers < 0:
            raise ValueError(f"finetune_layers must be >= 0, got {finetune_layers}")
        check_classifier(classifier, penalty, type(self).__name__)
        if classifier is not None and finetune_layers:
            raise ValueError(f"classifier={classifier!r} fits a head on a frozen body; it "
                             f"cannot also fine-tune finetune_layers={finetune_layers}")
        self.classifier = classifier
        self.penalty = float(penalty)
        self.inner_lr = float(inner_lr)
        self.num_classes = num_classes
        self.finetune_layers = finetune_layers
        self.feature_dim = int(self.model.feature_dim)
        self.pretrain_head = None if num_classes is None else nn.Linear(self.feature_dim,
                                                                         num_classes)

    # -- meta-training = supervised pretraining ------------------------------------------
    def batch_loss(self, episodes: Episodes, chunk_size: int | None
                   ) -> tuple[Tensor, Tensor]:
        """Loss of every example of the batch, pooled (support and query of all tasks) into
        one forward, and its score ``[1]`` (``chunk_size`` does not apply)."""
        x = torch.cat([episodes.support_x.flatten(0, 1), episodes.query_x.flatten(0, 1)])
        # x: [T*N*(K+Q), *x]
        if episodes.is_regression:
            y = torch.cat([episodes.support_y.flatten(0, 1), episodes.query_y.flatten(0, 1)])
            with once_differentiable_region():
                out = self.model(x)  # [T*(K+Q), 1]
            loss = mf.loss_fn(out, y)
            return loss, loss.detach().reshape(1)  # [], [1]
        y = self.global_labels(episodes)  # [T*N*(K+Q)]
        assert self.pretrain_head is not None
        with once_differentiable_region():
            features = self.model.body(x)  # [T*N*(K+Q), F]
        logits = self.pretrain_head(features)  # [T*N*(K+Q), num_classes]
        loss = mf.loss_fn(logits, y)
        return loss, mf.accuracy(logits, y).reshape(1)  # [], [1]

    def global_labels(self, episodes: Episodes) -> Tensor:
        """Dataset class of every support then query example: ``[T*N*(K+Q)]``."""
        if episodes.classes is None:
            raise ValueError(
                "FineTune needs episodes.classes (the dataset class of each label) to "
                "pretrain with global labels; sample episodes with EpisodeSampler"
            )
        if self.pretrain_head is None or self.num_classes is None:
            raise ValueError("FineTune needs num_classes for classification tasks")
        support = episodes.classes.gather(1, episodes.support_y)  # [T, N*K]
        query = episodes.classes.gather(1, episodes.query_y)  # [T, N*Q]
        y = torch.cat([support.flatten(), query.flatten()])  # [T*N*(K+Q)]
        if int(y.max()) >= self.num_classes:
            raise ValueError(
                f"episodes contain dataset class {int(y.max())} but num_classes="
                f"{self.num_classes}"
            )
        return y

    # -- adaptation ----------------------------------------------------------------------
    def split_body(self) -> tuple[nn.Module, nn.Module]:
        """``(frozen prefix, fine-tuned suffix)`` of ``model.body``; the suffix keeps the
        body's child names (``"3.0.weight"``)."""
        body = self.model.body
        if self.finetune_layers == 0:
            return body, nn.Sequential()
        if not isinstance(body, nn.Sequential):
            raise ValueError("finetune_layers > 0 needs model.body to be an nn.Sequential")
        blocks = [i for i, m in enumerate(body) if _has_params(m)]
        if self.finetune_layers > len(blocks):
            raise ValueError(f"finetune_layers={self.finetune_layers} but the body has only "
                             f"{len(blocks)} parametrised blocks")
        cut = blocks[-self.finetune_layers]
        return body[:cut], body[cut:]

    def trajectory(
        self, support_x: Tensor, support_y: Tensor, steps: int, query_x: Tensor | None = None
    ) -> Iterator[tuple[Params, Tensor | None]]:
        """Regression: SGD on all parameters. Classification: Adam on a new linear head
        (plus the body's last blocks) over support features computed once; or the
        logistic head, fitted once and yielded ``steps + 1`` times."""
        if support_y.is_floating_point():
            yield from mf.adaptation_trajectory(
                self.model, dict(self.model.named_parameters()), support_x, support_y, steps,
                lr=self.inner_lr, query_x=query_x,
            )
            return
        if self.classifier == "logistic":
            yield from logistic_trajectory(self.model.body, support_x, support_y, steps,
                                           query_x, self.penalty)
            return
        prefix, suffix = self.split_body()
        with torch.no_grad():
            f_support = prefix(support_x)  # [N*K, ...]
            f_query = None if query_x is None else prefix(query_x)  # [N*Q, ...]
        tuned = {n: p.detach().clone().requires_grad_() for n, p in suffix.named_parameters()}
        ways = int(support_y.max()) + 1
        weight = torch.zeros(ways, self.feature_dim, dtype=f_support.dtype,
                             device=f_support.device, requires_grad=True)  # [N, F]
        bias = torch.zeros(ways, dtype=f_support.dtype, device=f_support.device,
                           requires_grad=True)  # [N]
        optimizer = torch.optim.Adam([*tuned.values(), weight, bias], lr=self.inner_lr)
        frozen = {"body." + n: p.detach() for n, p in self.model.body.named_parameters()}

        def logits(features: Tensor) -> Tensor:
            return F.linear(mf.forward(suffix, tuned, features), weight, bias)  # [B, N]

        for s in range(steps + 1):
            out = None
            if f_query is not None:
                with torch.no_grad():
                    out = logits(f_query)  # [N*Q, N]
            params = {**frozen, **{"body." + n: p for n, p in tuned.items()},
                      "head.weight": weight, "head.bias": bias}
            yield params, out
            if s == steps:
                return
            with torch.enable_grad():
                loss = F.cross_entropy(logits(f_support), support_y)
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()

    def make_learner(self, params: Params, support_y: Tensor, copy: bool = True) -> Learner:
        """Regression: the model; classification: body + a new ``N``-way linear head
        (:class:`~metafit.algorithms.heads.LogisticHead` for ``classifier="logistic"``)."""
        if support_y.is_floating_point():
            return Learner(self.model, params, copy)
        ways = params["head.weight"].shape[0]
        head: nn.Module  # weights come from params
        if self.classifier == "logistic":
            head = LogisticHead(self.feature_dim, ways, device="meta")
        else:
            head = nn.Linear(self.feature_dim, ways, device="meta")
        return Learner(FewShotModel(self.model.body, head, self.feature_dim), params, copy)


@register_algorithm("linear_probe")
class LinearProbe(FineTune):
    """The frozen-encoder baseline: no meta-training at all; each task fits a linear
    (multinomial logistic regression) head on the support set's features from the
    pretrained body, by full-batch Adam at ``inner_lr`` for ``steps`` steps from zero (or,
    with ``classifier="logistic"``, on the L2-normalised features to convergence by
    L-BFGS).

    This is what a user tries first with a pretrained encoder (the "linear probe" of
    Radford et al. 2021 and of sentence-embedding evaluations such as SentEval, Conneau &
    Kiela 2018). ``metafit train`` writes its run directory without meta-training steps.
    """

    meta_trained = False
    supports_regression = False

    def __init__(self, model: nn.Module, inner_lr: float = 0.01, inner_steps: int = 100,
                 eval_inner_steps: int | None = None, classifier: str | None = None,
                 penalty: float = 1e-4, execution: Execution | None = None) -> None:
        super().__init__(model, None, inner_lr, inner_steps, 0, eval_inner_steps,
                         classifier, penalty, execution)
        self.model.requires_grad_(False)

    def batch_loss(self, episodes: Episodes, chunk_size: int | None
                   ) -> tuple[Tensor, Tensor]:
        raise ValueError("linear_probe is not meta-trained: evaluate it directly "
                         "(metafit train writes its run without steps)")
