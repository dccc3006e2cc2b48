"""Datasets: :class:`ClassDataset` implementations and task families."""

from metafit.data.base import ClassDataset, TaskFamily, TensorClassDataset

__all__ = ["ClassDataset", "TaskFamily", "TensorClassDataset"]
