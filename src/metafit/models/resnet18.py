"""The standard ResNet-18 (He et al. 2016, "Deep residual learning for image recognition").

BasicBlocks in four stages of [2, 2, 2, 2] blocks with widths 64-128-256-512 (scaled by
``width / 64``); stages 2-4 halve the resolution with a stride-2 first block and a 1x1
convolution + BatchNorm shortcut. Stem: 7x7/2 convolution + 3x3/2 max-pool for large images
(``image_size > 32``), or the CIFAR-style 3x3/1 convolution without max-pool for small ones
(``image_size <= 32``). A global average pool gives the feature vector.

BatchNorm layers use batch statistics only (``track_running_stats=False``, see
:mod:`metafit.models.base`), so the model holds no state besides its parameters and works
under ``torch.func.functional_call`` and second-order autograd (no in-place operations).

Shapes: ``x [B, C, H, W]`` -> features ``[B, F]`` with F = 8 * ``width`` -> logits
``[B, out_features]``.
"""

from __future__ import annotations

from torch import Tensor, nn

from metafit.models.base import FewShotModel, feature_dim, make_head

__all__ = ["BasicBlock", "resnet18"]


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    ``[B, c_in, H, W]`` -> ``[B, c_out, ceil(H / stride), ceil(W / stride)]``; the shortcut
    is a 1x1 convolution + BatchNorm when the shape changes, else the identity.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = _bn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = _bn(c_out)
        self.act = nn.ReLU()
        self.shortcut: nn.Module = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), _bn(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, c_in, H, W]`` -> ``[B, c_out, H', W']``."""
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))  # out-of-place add: safe for double backward


def resnet18(
    out_features: int | None = 5,
    in_channels: int = 3,
    image_size: int = 84,
    width: int = 64,
) -> FewShotModel:
    """ResNet-18 (He et al. 2016) with a linear head.

    Args:
        out_features: classes of the head; ``None`` for an embedding network (ProtoNet).
        in_channels: 3 for colour images, 1 for Omniglot.
        image_size: input height = width; ``<= 32`` selects the small-image stem (3x3/1
            convolution, no max-pool), larger the ImageNet stem (7x7/2 + 3x3/2 max-pool).
        width: filters of the first stage (64 in the paper); stages use 1x, 2x, 4x, 8x.

    Returns:
        ``FewShotModel``: ``x [B, in_channels, image_size, image_size]`` -> ``[B, out]``,
        with ``feature_dim`` = 8 * ``width``.
    """
    if width < 1 or in_channels < 1 or image_size < 1:
        raise ValueError(f"resnet18 needs width, in_channels, image_size >= 1, got {width}, "
                         f"{in_channels}, {image_size}")
    stem: list[nn.Module]
    if image_size <= 32:
        stem = [nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
                _bn(width), nn.ReLU()]
    else:
        stem = [nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                _bn(width), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1)]
    blocks: list[nn.Module] = []
    c_in = width
    for stage, mult in enumerate((1, 2, 4, 8)):
        c_out = width * mult
        for i in range(2):
            blocks.append(BasicBlock(c_in, c_out, stride=2 if stage > 0 and i == 0 else 1))
            c_in = c_out
    body = nn.Sequential(*stem, *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    for m in body.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    f = feature_dim(body, (in_channels, image_size, image_size))
    return FewShotModel(body, make_head(f, out_features), f)
