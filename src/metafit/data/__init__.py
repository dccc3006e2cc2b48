"""Datasets: :class:`ClassDataset` implementations and task families."""

from metafit.data.base import ClassDataset, TaskFamily, TensorClassDataset
from metafit.data.errors import DatasetError
from metafit.data.glyphs import Glyphs
from metafit.data.idx import IDX
from metafit.data.image_folder import ImageFolder
from metafit.data.image_table import ImageTable
from metafit.data.omniglot import Omniglot
from metafit.data.sinusoid import Sinusoid
from metafit.data.text_csv import TextCSV

__all__ = [
    "ClassDataset",
    "DatasetError",
    "Glyphs",
    "IDX",
    "ImageFolder",
    "ImageTable",
    "Omniglot",
    "Sinusoid",
    "TaskFamily",
    "TensorClassDataset",
    "TextCSV",
]
