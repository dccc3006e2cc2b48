"""Datasets: :class:`ClassDataset` implementations and task families."""

from metafit.data.base import ClassDataset, TaskFamily, TensorClassDataset
from metafit.data.errors import DatasetError
from metafit.data.idx import IDX
from metafit.data.image_folder import ImageFolder
from metafit.data.omniglot import Omniglot

__all__ = [
    "ClassDataset",
    "DatasetError",
    "IDX",
    "ImageFolder",
    "Omniglot",
    "TaskFamily",
    "TensorClassDataset",
]
