"""How a meta-batch runs, apart from what it computes.

An algorithm supplies its maths as per-task and whole-batch functions
(:mod:`.program`); :class:`Execution` holds the explicit settings; :mod:`.plan` decides the
path from them, the device and the model; :mod:`.run` runs it (serially, on worker threads,
:mod:`.threads`, or vmapped), and :mod:`.cuda_graphs` replays it as a CUDA graph. This
floor sits below :mod:`metafit.algorithms`, which calls it.
"""

from metafit.execution.plan import runs_batched
from metafit.execution.run import meta_gradient_tensors, meta_gradients
from metafit.execution.settings import Execution

__all__ = ["Execution", "meta_gradient_tensors", "meta_gradients", "runs_batched"]
