"""The 4-block convolutional backbone of the few-shot literature.

Each block: 3x3 convolution (``hidden`` filters) -> BatchNorm (batch statistics) -> ReLU ->
2x2 max-pool (Vinyals et al. 2016; Finn et al. 2017 use 64 filters on Omniglot and 32 on
MiniImageNet). ``strided=True`` replaces the pooling by stride-2 convolutions, the variant
the MAML paper used for Omniglot. Pooled blocks are :class:`metafit.models.blocks.ConvBlock`
(same children and parameter names; an exact, faster evaluation order and a fused kernel
for first-order passes); strided blocks are :class:`metafit.models.blocks.StridedConvBlock`
(the plain block's names, with a BatchNorm that differentiates twice under ``vmap``).

Shapes: ``x [B, C, H, W]`` -> features ``[B, F]`` -> logits ``[B, out_features]``;
on 28x28 inputs F = ``hidden`` (pooled) or 4*``hidden`` (strided); on 84x84, 25*``hidden``.
"""

from __future__ import annotations

from torch import nn

from metafit.models.base import FewShotModel, feature_dim, make_head
from metafit.models.blocks import ConvBlock, StridedConvBlock

__all__ = ["conv4"]


def _block(c_in: int, c_out: int, strided: bool, groups: int = 1) -> nn.Sequential:
    return (StridedConvBlock(c_in, c_out, groups) if strided
            else ConvBlock(c_in, c_out, groups))


def conv4(
    out_features: int | None = 5,
    in_channels: int = 1,
    hidden: int = 64,
    image_size: int = 28,
    depth: int = 4,
    strided: bool = False,
    groups: int = 1,
) -> FewShotModel:
    """Conv-4 (or conv-``depth``) backbone with a linear head.

    Args:
        out_features: classes of the head; ``None`` for an embedding network (ProtoNet).
        in_channels: 1 for Omniglot, 3 for colour images.
        hidden: filters per block (64 for Omniglot, 32 for 84x84 images).
        image_size: input height = width, used to size the head.
        depth: number of blocks (4 in the papers).
        strided: stride-2 convolutions instead of max-pooling.
        groups: the blocks after the first convolve ``groups`` independent groups of
            ``hidden / groups`` channels (the first block's filters each see the whole
            input), so the body is ``groups`` conv4 networks of ``hidden / groups`` filters
            side by side, its features theirs concatenated group after group
            (:mod:`metafit.models.ensemble` merges trained networks into one).
    """
    if depth < 1 or hidden < 1 or in_channels < 1:
        raise ValueError(f"conv4 needs depth, hidden, in_channels >= 1, got {depth}, {hidden}, "
                         f"{in_channels}")
    if groups < 1 or hidden % groups:
        raise ValueError(f"conv4 groups must divide hidden={hidden}, got {groups}")
    if image_size < 2**depth and not strided:
        raise ValueError(f"image_size={image_size} is too small for {depth} pooling blocks")
    blocks = [_block(in_channels if i == 0 else hidden, hidden, strided, 1 if i == 0 else groups)
              for i in range(depth)]
    body = nn.Sequential(*blocks, nn.Flatten())
    width = feature_dim(body, (in_channels, image_size, image_size))
    return FewShotModel(body, make_head(width, out_features), width)
