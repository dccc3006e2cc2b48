"""The ResNet-12 backbone of the few-shot literature.

Oreshkin et al. 2018 (TADAM, "Task dependent adaptive metric for improved few-shot
learning") and Lee et al. 2019 (MetaOptNet, "Meta-learning with differentiable convex
optimization"): four residual blocks with widths 64-160-320-640 (TADAM used 64-128-256-512).
Each block is three 3x3 convolutions, each followed by BatchNorm and LeakyReLU(0.1) (the
third activation comes after the residual addition), a 1x1 convolution + BatchNorm on the
shortcut, then a 2x2 max-pool. A global average pool gives the feature vector.

BatchNorm layers use batch statistics only (``track_running_stats=False``, see
:mod:`metafit.models.base`), so the model holds no state besides its parameters and works
under ``torch.func.functional_call`` and second-order autograd (no in-place operations).

Shapes: ``x [B, C, H, W]`` -> features ``[B, F]`` -> logits ``[B, out_features]``;
F = ``widths[-1]`` with ``avg_pool=True``, else ``widths[-1] * (H // 16) ** 2``
(on 84x84 inputs the last map is 5x5: 84 -> 42 -> 21 -> 10 -> 5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from metafit.models.base import FewShotModel, feature_dim, make_head

__all__ = ["ResNet12Block", "resnet12"]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


class ResNet12Block(nn.Module):
    """One ResNet-12 block: ``[B, c_in, H, W]`` -> ``[B, c_out, H // 2, W // 2]``.

    ``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x))))))))) + bn(conv1x1(x)))``, then a
    2x2 max-pool and, when ``drop_rate > 0``, dropout (the papers use DropBlock; plain
    dropout is the simple stand-in here).
    """

    def __init__(self, c_in: int, c_out: int, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn1 = _bn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = _bn(c_out)
        self.conv3 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn3 = _bn(c_out)
        self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), _bn(c_out))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2)
        self.drop_rate = drop_rate

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, c_in, H, W]`` -> ``[B, c_out, H // 2, W // 2]``."""
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out = self.act(out + self.shortcut(x))  # out-of-place add: safe for double backward
        out = self.pool(out)
        if self.drop_rate > 0.0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


def resnet12(
    out_features: int | None = 5,
    in_channels: int = 3,
    image_size: int = 84,
    widths: Sequence[int] = (64, 160, 320, 640),
    drop_rate: float = 0.0,
    avg_pool: bool = True,
) -> FewShotModel:
    """ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019) with a linear head.

    Args:
        out_features: classes of the head; ``None`` for an embedding network (ProtoNet).
        in_channels: 3 for colour images, 1 for Omniglot.
        image_size: input height = width (at least 16: four 2x2 pools), used to size the head.
        widths: filters of the four blocks (64-160-320-640 in MetaOptNet, 64-128-256-512
            in TADAM).
        drop_rate: dropout after each block (0 disables it).
        avg_pool: global average pool to ``[B, widths[-1]]``; otherwise flatten the last map.

    Returns:
        ``FewShotModel``: ``x [B, in_channels, image_size, image_size]`` -> ``[B, out]``.
    """
    widths = tuple(int(w) for w in widths)
    if len(widths) != 4 or min(widths) < 1 or in_channels < 1:
        raise ValueError(f"resnet12 needs 4 positive widths and in_channels >= 1, got "
                         f"{widths}, {in_channels}")
    if image_size < 16:
        raise ValueError(f"image_size={image_size} is too small for 4 pooling blocks (>= 16)")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    blocks: list[nn.Module] = []
    c_in = in_channels
    for w in widths:
        blocks.append(ResNet12Block(c_in, w, drop_rate))
        c_in = w
    tail: list[nn.Module] = [nn.AdaptiveAvgPool2d(1)] if avg_pool else []
    body = nn.Sequential(*blocks, *tail, nn.Flatten())
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.1)
    width = feature_dim(body, (in_channels, image_size, image_size))
    return FewShotModel(body, make_head(width, out_features), width)
