"""Meta-gradients replayed as one CUDA graph: no kernel-launch overhead on small tasks.

On a GPU a conv4 task of 80 Omniglot images is a few hundred small kernels (forward,
backward and, for second-order MAML, the double backward), so a meta-batch of 32 tasks is
about 10^4 launches and the GPU waits on Python and the autograd engine (every per-task
implementation is launch-bound: benchmarks/RESULTS.md). ``torch.compile`` cannot help
second-order MAML (it does not support double backward through compiled regions), but a
CUDA graph can: the kernels of one whole meta-gradient, second derivatives included, are
recorded once (``torch.cuda.graph``) and then replayed with a single launch per
meta-batch, on the same input buffers (Nvidia's CUDA Graphs; PyTorch's "whole-network
capture").

:class:`GraphedMetaGradients` wraps an algorithm's :meth:`~metafit.algorithms.Algorithm.
meta_gradients`: the first call (and any call whose batch has other shapes or dtypes)
warms up on a side stream, captures, and replays; later calls copy the batch into the
captured input buffers and replay. It computes what the eager call computes (tested on the
GPU against it). What a capture needs, and what makes it refuse:

* no device-to-host read inside the computation: the metrics stay on the device
  (:func:`~metafit.execution.run.meta_gradient_tensors`) and are read after the replay.
  MAML, FOMAML, Meta-SGD and ANIL qualify (on the per-task and on the ``vmap`` path,
  tested on a GPU); an algorithm that reads a value back while computing (FineTune's
  metrics, ProtoNet's per-task path counting its classes with ``int(y.max())``) fails
  with a message naming it, and the recipe allows ``cuda_graphs`` for those four only;
* fixed parameters: the graph reads the parameters' storage, so in-place optimiser steps
  (every ``torch.optim`` optimiser) are seen by the next replay; replacing a parameter
  tensor is not (:meth:`GraphedMetaGradients.reset` forces a new capture);
* one thread: the capture runs the tasks on this thread (``Execution.workers`` is ignored).

The warm-up calls run the computation three times on the first batch; BatchNorm running
statistics, the only state they touch, are restored afterwards. The graph keeps the memory
of one eager meta-gradient reserved while it lives.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from metafit.episodes import Episodes
from metafit.execution.run import meta_gradient_tensors

__all__ = ["GraphedMetaGradients"]

log = logging.getLogger(__name__)

_FIELDS = ("support_x", "support_y", "query_x", "query_y", "classes")


def _signature(episodes: Episodes) -> tuple[object, ...]:
    """Shapes, dtypes and devices of the batch's tensors: what a graph is specific to."""
    out: list[object] = []
    for name in _FIELDS:
        t = getattr(episodes, name)
        out.append(None if t is None else (tuple(t.shape), t.dtype, t.device))
    return tuple(out)


class GraphedMetaGradients:
    """``algorithm.meta_gradients`` captured as a CUDA graph and replayed (module docstring).

    Args:
        algorithm: an algorithm whose parameters are on a CUDA device.
        warmup: eager calls on a side stream before the capture (cuDNN and cuBLAS set up
            their workspaces there; PyTorch's CUDA-graph documentation asks for a few).

    Call it like ``meta_gradients``: ``graphed(episodes) -> (grads, metrics)`` with
    ``episodes`` on the algorithm's device; the gradients are fresh tensors (the graph's own
    outputs are overwritten by the next replay).
    """

    def __init__(self, algorithm: Any, warmup: int = 3) -> None:
        first = next(algorithm.parameters(), None)
        if first is None or first.device.type != "cuda":
            where = "no parameters" if first is None else f"parameters on {first.device}"
            raise ValueError(f"CUDA graphs need an algorithm on a CUDA device; it has {where}")
        if warmup < 1:
            raise ValueError(f"warmup must be at least 1, got {warmup}")
        self.algorithm = algorithm
        self.warmup = warmup
        self.captures = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._key: tuple[object, ...] | None = None
        self._static: Episodes | None = None
        self._grads: dict[str, Tensor] = {}
        self._metrics: dict[str, Tensor] = {}

    def reset(self) -> None:
        """Drop the captured graph (and its memory); the next call captures again."""
        self._graph, self._key, self._static = None, None, None
        self._grads, self._metrics = {}, {}

    def __call__(self, episodes: Episodes) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The meta-gradients and metrics of ``episodes`` (``[T, ...]`` as everywhere)."""
        key = (*_signature(episodes), self.algorithm.training)
        if self._graph is None or key != self._key:
            self._capture(episodes, key)
        static = self._static
        assert static is not None and self._graph is not None
        for name in _FIELDS:
            source = getattr(episodes, name)
            if source is not None:
                getattr(static, name).copy_(source)
        self._graph.replay()
        grads = {n: g.clone() for n, g in self._grads.items()}
        values = torch.stack(list(self._metrics.values())).tolist()  # one device read
        return grads, dict(zip(self._metrics, values, strict=True))

    def _capture(self, episodes: Episodes, key: tuple[object, ...]) -> None:
        self.reset()
        algo = self.algorithm
        static = Episodes(episodes.support_x.clone(), episodes.support_y.clone(),
                          episodes.query_x.clone(), episodes.query_y.clone(),
                          None if episodes.classes is None else episodes.classes.clone())
        buffers = {n: b.clone() for n, b in algo.named_buffers()}
        stream = torch.cuda.Stream(device=static.support_x.device)
        stream.wait_stream(torch.cuda.current_stream())
        one_thread = replace(algo.execution, workers=1)  # a capture records this thread
        with torch.cuda.stream(stream):
            for _ in range(self.warmup):
                meta_gradient_tensors(algo, static, one_thread)
        torch.cuda.current_stream().wait_stream(stream)
        with torch.no_grad():
            for n, b in algo.named_buffers():
                b.copy_(buffers[n])
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                grads, recorded = meta_gradient_tensors(algo, static, one_thread)
        except RuntimeError as err:
            raise RuntimeError(
                f"{type(algo).__name__}'s meta-gradient cannot be captured as a CUDA "
                f"graph ({err}); run it without CUDA graphs") from err
        self._graph, self._key, self._static = graph, key, static
        self._grads, self._metrics = grads, dict(recorded)
        self.captures += 1
        log.info("captured %s's meta-gradient as a CUDA graph (%d tasks)",
                 type(algo).__name__, len(static))
