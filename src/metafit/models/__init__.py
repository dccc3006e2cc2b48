"""Backbones: plain ``nn.Module``s with a ``body`` and a ``head`` (see :mod:`.base`)."""

from metafit.models.base import FewShotModel
from metafit.models.conv4 import conv4
from metafit.models.mlp import mlp
from metafit.models.resnet12 import resnet12
from metafit.models.resnet18 import resnet18

__all__ = ["FewShotModel", "conv4", "mlp", "resnet12", "resnet18"]
