"""Fast forward paths for the conv blocks of the few-shot backbones (exact, CPU-first).

A block ``conv3x3 -> BatchNorm (batch statistics) -> ReLU -> maxpool 2x2`` spends most of
its time on memory-bound elementwise work, not on the convolution (DESIGN.md sec. 7). Two
rewrites compute the same function and the same gradients:

* **pool before ReLU** (always): ``maxpool(relu(z)) == relu(maxpool(z))`` exactly, and the
  gradients agree too (where the max is negative both give zero), so the ReLU and its
  backward touch a quarter of the elements.
* **the fused first block** (inside :func:`once_differentiable`, or without autograd): for
  a convolution with few input channels (``C_in * 9 <= 27``: grey or RGB images) the
  batch-norm statistics of the convolution's output are closed-form functions of the
  weights and of the 9x9 (27x27) second-moment matrix of the input patches, and a positive
  (negative) BN scale commutes with max- (min-) pooling. So the block evaluates the
  convolution once, max-pools it, and normalises only the pooled quarter; its backward
  never builds a full-resolution gradient: the BN and convolution weight gradients come
  from the pooled positions plus closed-form terms (its speed: benchmarks/RESULTS.md).

The fused backward is not itself differentiable (``once_differentiable``), so it is used
only where the caller declares that no second derivative will be taken through the
forward: the query pass of MAML (its outer gradient differentiates through the *support*
pass, not through the query backward), every pass of the first-order methods, ANIL's and
ProtoNet's body, the query scores of adaptation trajectories. The flag is thread-local
(task-parallel workers, :mod:`metafit.execution.threads`, run support and query passes at once).

The convolution bias before a batch-statistics BN has no effect on the output; the fused
block returns an exactly zero gradient for it (autograd returns rounding noise).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = [
    "composite_batch_norm",
    "native_batch_norms",
    "ConvBlock",
    "StridedConvBlock",
    "under_functorch",
    "fused_block_applies",
    "is_once_differentiable",
    "once_differentiable_region",
]

_state = threading.local()


@contextlib.contextmanager
def once_differentiable_region() -> Iterator[None]:
    """Within this context (in this thread), forward passes will be differentiated at most
    once, so blocks may use kernels whose backward has no backward of its own."""
    previous = getattr(_state, "once", False)
    _state.once = True
    try:
        yield
    finally:
        _state.once = previous


def is_once_differentiable() -> bool:
    """True inside :func:`once_differentiable_region` (in this thread). Only there, so a
    model gives bit-identical outputs with and without autograd elsewhere."""
    return bool(getattr(_state, "once", False))


def _patches(x: Tensor) -> Tensor:
    """3x3 patches (zero padding 1) grouped by 2x2 pooling window: ``x [B, C, H, W]``
    (H, W even) -> ``[C*9, 4, B*H/2*W/2]``; axis 1 is the position inside the window."""
    b, c, h, w = x.shape
    cols = F.unfold(x, 3, padding=1)  # [B, C*9, H*W]
    cols = cols.view(b, c * 9, h // 2, 2, w // 2, 2).permute(1, 3, 5, 0, 2, 4)
    return cols.reshape(c * 9, 4, b * (h // 2) * (w // 2)).contiguous()


class _FusedBlock(torch.autograd.Function):
    """relu(maxpool2(BN(conv3x3(x)))) from the window-grouped patches of ``x``.

    BN with batch statistics (Ioffe & Szegedy 2015): with ``y = w . patch`` (bias-free),
    ``mu = w . E[patch]`` and ``var = w^T E[patch patch^T] w - mu^2``, both from the
    ``[K, K]`` moment matrix (K = 9 * C_in). Backward: with ``g`` the gradient at the pooled
    maxima, ``d beta = sum g``, ``d|gamma| = sum g * xhat`` and
    ``d w = |gamma| / sigma * (sum_max g * patch - d beta * E[patch]
    - d|gamma| / sigma * E[(y - mu) patch])``, the last two terms in closed form.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, cols: Tensor, shape: tuple[int, int, int], weight: Tensor,
        bias: Tensor | None, gamma: Tensor, beta: Tensor, eps: float,
    ) -> Tensor:
        # The conv bias shifts the conv output and its BN mean alike: no effect, zero grad.
        k, _, pooled = cols.shape
        c = weight.shape[0]
        sign = torch.where(gamma >= 0, 1.0, -1.0).to(weight.dtype)  # [C]
        w2 = weight.reshape(c, k) * sign[:, None]  # [C, K]: max-pool of sign * conv
        flat = cols.view(k, -1)  # [K, M], M = B*H*W
        m = flat.shape[1]
        flat64 = flat.double()
        mean_patch = flat64.sum(1) / m  # [K]
        second = (flat64 @ flat64.T) / m  # [K, K]
        w64 = w2.double()
        mu64 = w64 @ mean_patch  # [C]: mean of the (bias-free) conv output
        var = ((w64 @ second) * w64).sum(1) - mu64 * mu64  # [C]
        inv = torch.rsqrt(var.clamp_min(0) + eps).to(weight.dtype)  # [C]
        mu = mu64.to(weight.dtype)
        y = (w2 @ flat).view(c, 4, pooled)  # [C, 4, P]: sign * conv output, by window
        z = y.amax(dim=1)  # [C, P]
        scale = gamma.abs() * inv  # [C]
        out = torch.addcmul((beta - scale * mu)[:, None], scale[:, None], z).clamp_min_(0)
        ctx.save_for_backward(cols, w2, sign, y, z, mu, inv, gamma, out)
        ctx.has_bias = bias is not None  # type: ignore[attr-defined]
        ctx.stats = (mean_patch.to(weight.dtype), second.to(weight.dtype))  # type: ignore[attr-defined]
        b, h, w = shape
        return out.view(c, b, h, w).transpose(0, 1)  # [B, C, H/2, W/2]

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        cols, w2, sign, y, z, mu, inv, gamma, out = ctx.saved_tensors
        mean_patch, second = ctx.stats
        c = w2.shape[0]
        k, _, pooled = cols.shape
        # d/d BN output: the ReLU's backward (float x bool products are slow on CPU).
        g = torch.ops.aten.threshold_backward(grad.transpose(0, 1).reshape(c, pooled), out, 0)
        d_beta = g.sum(1)  # [C]
        d_abs_gamma = ((g * z).sum(1) - mu * d_beta) * inv  # [C]: sum of g * xhat
        # Route g to the window position that held the max, the first one on ties (as
        # max_pool2d): what is routed at position j is taken out of the remainder.
        routed = torch.empty(c, 4, pooled, dtype=g.dtype)
        hit = torch.empty_like(g)
        remainder = g
        for j in range(3):
            torch.eq(y[:, j], z, out=hit)  # [C, P] as 0.0 / 1.0
            torch.mul(remainder, hit, out=routed[:, j])
            remainder = remainder - routed[:, j]
        routed[:, 3] = remainder
        sparse = routed.view(c, -1) @ cols.view(k, -1).T  # [C, K]: sum of g * patch at maxima
        cov = w2 @ second - mu[:, None] * mean_patch[None, :]  # [C, K]: E[(y - mu) * patch]
        d_w2 = (gamma.abs() * inv)[:, None] * (
            sparse - d_beta[:, None] * mean_patch[None, :]
            - (d_abs_gamma * inv)[:, None] * cov
        )
        d_weight = (d_w2 * sign[:, None]).view(c, k // 9, 3, 3)
        d_bias = None if not ctx.has_bias else torch.zeros_like(d_beta)
        return None, None, d_weight, d_bias, d_abs_gamma * sign, d_beta, None


def fused_block_applies(block: ConvBlock, x: Tensor) -> bool:
    """Whether the fused kernel computes ``block(x)`` here (see the module docstring)."""
    conv, bn = cast(nn.Conv2d, block[0]), cast(nn.BatchNorm2d, block[1])
    return bool(
        is_once_differentiable()
        and x.dim() == 4 and x.shape[-1] % 2 == 0 and x.shape[-2] % 2 == 0
        and conv.in_channels * 9 <= 27 and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
        and conv.groups == 1 and bn.affine and (bn.training or not bn.track_running_stats)
        and x.device.type == "cpu" and not under_functorch(x)
        and not torch.is_autocast_enabled("cpu")  # it computes in x's dtype, exactly
    )


class ConvBlock(nn.Sequential):
    """``Conv2d(3x3) -> BatchNorm2d -> ReLU -> MaxPool2d(2)`` (children 0..3, so parameter
    names and checkpoints are those of the plain ``nn.Sequential``), evaluated as conv ->
    BN -> pool -> ReLU, or by the fused kernel where :func:`fused_block_applies`."""

    def __init__(self, c_in: int, c_out: int, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, groups=groups),
            nn.BatchNorm2d(c_out, track_running_stats=False),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C_in, H, W]`` -> ``[B, C_out, H/2, W/2]`` (floor for odd sizes)."""
        conv, bn = self[0], self[1]
        if fused_block_applies(self, x):
            b, _, h, w = x.shape
            return _FusedBlock.apply(_patches(x), (b, h // 2, w // 2), conv.weight,
                                     conv.bias, bn.weight, bn.bias, bn.eps)
        if under_functorch(x):
            return F.relu(F.max_pool2d(composite_batch_norm(conv(x), cast(nn.BatchNorm2d, bn)), 2))
        return F.relu(F.max_pool2d(bn(conv(x)), 2))


class StridedConvBlock(nn.Sequential):
    """``Conv2d(3x3, stride 2) -> BatchNorm2d -> ReLU`` (children 0..2, the plain
    ``nn.Sequential``'s parameter names): the block of the strided conv4 that the MAML paper
    used on Omniglot. Under ``torch.func`` its BatchNorm is :func:`composite_batch_norm`,
    so second-order MAML can batch its tasks with ``vmap`` (the fast path on a GPU)."""

    def __init__(self, c_in: int, c_out: int, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, groups=groups),
            nn.BatchNorm2d(c_out, track_running_stats=False),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C_in, H, W]`` -> ``[B, C_out, ceil(H/2), ceil(W/2)]``."""
        y = self[0](x)
        bn = cast(nn.BatchNorm2d, self[1])
        return F.relu(composite_batch_norm(y, bn) if under_functorch(x) else bn(y))


def under_functorch(x: Tensor) -> bool:
    """Whether ``x`` is inside a ``torch.func`` transform (``vmap``, ``grad``)."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(x)
                or torch._C._functorch.is_batchedtensor(x))


def composite_batch_norm(y: Tensor, bn: nn.BatchNorm2d) -> Tensor:
    """Training-mode BatchNorm of ``y [B, C, H, W]`` from batch statistics, written with
    plain ops: ``(y - mean) / sqrt(var + eps) * weight + bias``.

    Used under ``torch.func`` transforms (``vmap``, ``grad``): there PyTorch's fused
    ``batch_norm`` gives wrong second derivatives (measured: the vmapped second-order
    MAML meta-gradient of conv4 differed from the per-task loop by 3e-3 relative even in
    float64, and the gradient of the conv bias, which BatchNorm cancels, was not zero).
    The composite form differentiates to any order (tests/test_speed_paths.py)."""
    mean = y.mean(dim=(0, 2, 3), keepdim=True)  # [1, C, 1, 1]
    var = (y - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)  # biased, as BN normalises
    scale = torch.rsqrt(var + bn.eps)
    if bn.affine:
        return (y - mean) * scale * bn.weight[:, None, None] + bn.bias[:, None, None]
    return (y - mean) * scale


def native_batch_norms(model: nn.Module) -> list[str]:
    """Names of ``model``'s BatchNorm layers that run PyTorch's fused ``batch_norm`` under
    ``torch.func`` transforms (every one outside a :class:`ConvBlock` or
    :class:`StridedConvBlock`, which switch to :func:`composite_batch_norm` there)."""
    inside = {id(m[1]) for m in model.modules() if isinstance(m, (ConvBlock, StridedConvBlock))}
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside]
