"""Random affine distortions of images, as a sampler transform for meta-training.

Koch, Zemel & Salakhutdinov (2015), "Siamese Neural Networks for One-shot Image
Recognition" (ICML deep learning workshop), trained on Omniglot with affine distortions:
rotation in [-10, 10] degrees, shear in [-0.3, 0.3], scale in [0.8, 1.2] per axis and a
translation of up to 2 of the 105 pixels per axis. :class:`RandomAffine` draws one such
transform per image (support and queries alike) from the generator it is given, builds the
sampling grids of the whole meta-batch at once (``affine_grid``) and resamples with
bilinear interpolation (``grid_sample``); the background outside the image is 0 (the
datasets store strokes bright on 0). No Python loop over tasks or images.

As an :class:`~metafit.data.transforms.EpisodeTransform` it draws from the training
sampler's running generator, so a resumed run draws the same distortions; evaluation
episodes are never distorted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from metafit.episodes import Episodes

__all__ = ["RandomAffine"]


@dataclass(frozen=True)
class RandomAffine:
    """Per-image random affine maps (defaults: Koch et al. 2015's ranges, with the
    translation as a fraction of the image side: 2 / 105).

    Attributes:
        degrees: rotation drawn uniformly in ``[-degrees, degrees]``.
        shear: shear factors (x and y) drawn uniformly in ``[-shear, shear]``.
        scale: per-axis scale factors drawn uniformly in ``[scale[0], scale[1]]``.
        translate: per-axis shift drawn uniformly in ``[-translate, translate]`` of the
            image side.
        strength: multiplies every range (0: the identity map; 1: the ranges above).
    """

    degrees: float = 10.0
    shear: float = 0.3
    scale: tuple[float, float] = (0.8, 1.2)
    translate: float = 2.0 / 105.0
    strength: float = 1.0

    def __call__(self, episodes: Episodes, generator: torch.Generator) -> Episodes:
        """The same episodes with every support and query image distorted (support first,
        then queries, from ``generator``)."""
        support = self.images(episodes.support_x, generator)
        query = self.images(episodes.query_x, generator)
        return replace(episodes, support_x=support, query_x=query)

    def images(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """``x [*b, C, H, W]`` (float) -> distorted ``[*b, C, H, W]``, one map per image.

        Raises:
            ValueError: ``x`` is not a batch of float images.
        """
        if x.dim() < 4 or not x.is_floating_point():
            raise ValueError("random affine augmentation is for float images [..., C, H, W]; "
                             f"got {tuple(x.shape)} {x.dtype}")
        flat = x.reshape(-1, *x.shape[-3:])  # [B, C, H, W]
        grid = F.affine_grid(self.matrices(len(flat), generator).to(flat.dtype), list(flat.shape),
                             align_corners=False)  # [B, H, W, 2]
        out = F.grid_sample(flat, grid, mode="bilinear", padding_mode="zeros",
                            align_corners=False)
        return out.view_as(x)

    def matrices(self, n: int, generator: torch.Generator) -> Tensor:
        """``[n, 2, 3]`` maps from output to input coordinates (``affine_grid``'s
        convention, in [-1, 1]): ``A = R(theta) @ Shear(sx, sy) @ diag(1/s_x, 1/s_y)`` and a
        shift of ``2 * t`` (the side spans 2)."""
        u = torch.rand(n, 7, generator=generator) * 2 - 1  # [n, 7] uniform in [-1, 1)
        k = self.strength
        theta = u[:, 0] * math.radians(self.degrees) * k  # [n]
        sh_x, sh_y = u[:, 1] * self.shear * k, u[:, 2] * self.shear * k
        lo, hi = self.scale
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        s_x = 1 + (mid - 1 + u[:, 3] * half) * k  # [n]
        s_y = 1 + (mid - 1 + u[:, 4] * half) * k
        cos, sin = theta.cos(), theta.sin()
        rotation = torch.stack([torch.stack([cos, -sin], -1),
                                torch.stack([sin, cos], -1)], -2)  # [n, 2, 2]
        one = torch.ones_like(sh_x)
        shear = torch.stack([torch.stack([one, sh_x], -1),
                             torch.stack([sh_y, one], -1)], -2)  # [n, 2, 2]
        zoom = torch.diag_embed(torch.stack([1 / s_x, 1 / s_y], -1))  # [n, 2, 2]
        shift = (u[:, 5:7] * self.translate * k * 2).unsqueeze(-1)  # [n, 2, 1]
        return torch.cat([rotation @ shear @ zoom, shift], -1)  # [n, 2, 3]
