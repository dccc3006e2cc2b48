"""Body features computed once and reused across episodes while the body is unchanged.

Episodes share their examples: 600 test episodes of 5-way tasks with 15 queries per class
draw 48,000 sentences from a pool of a few thousand, so each is embedded a dozen times.
Inside :func:`cached_body`, ``model.body``'s forward goes through a :class:`FeatureCache`:
each distinct input row (keyed by its bytes) goes through the body once, in one batch with
the other new rows of its call, and later calls with the body's own parameters look it up.

Evaluation (:func:`metafit.evaluation.protocol.evaluate`) always installs it for classification.
Whatever leaves the body fixed then embeds each example once: ProtoNet, ANIL, the FineTune
and linear-probe heads, MAML / FOMAML / Meta-SGD / Reptile when only the head adapts; an
algorithm that adapts the body still gets its unadapted passes (the query set scored
before adaptation) from the cache. The trainer installs it while the body is frozen (the
``head`` adapt scope), where the training pool's examples recur across iterations.

The body runs itself, uncached, on any call

* with other values than its own parameters' (a functional call with adapted body
  parameters, e.g. MAML's inner loop on the whole encoder; a copy of the parameters with
  the same values is recognised, compared smallest tensor first),
* that needs gradients through the body (grad mode on and a parameter requiring grad), or
  runs under ``vmap``;

and the cache is never installed on a body with batch statistics (``BatchNorm`` in
training mode or without running statistics: one example's output depends on the rest of
the batch, see :mod:`metafit.evaluation.protocol`; a pretrained image encoder's BatchNorm,
held in eval mode, is cacheable) or active dropout. An in-place change of the body's own
parameters (an optimizer step) empties it.

Results equal the uncached ones up to float rounding: a row's features are computed in a
batch of other rows, which may change the last bits of a text encoder's output (another
padding length), never more (tested for every algorithm).
"""

from __future__ import annotations

import copy
import logging
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FeatureCache", "cached_body", "uncacheable_reason"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 * 2**30  # stop storing (keep serving hits) beyond 2 GiB of features


def uncacheable_reason(body: nn.Module | None) -> str | None:
    """Why ``body``'s outputs cannot be cached per example, or ``None`` when they can."""
    if body is None:
        return "the model has no body"
    for name, m in body.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and (
                m.training or not m.track_running_stats):
            return f"{name or 'body'} normalises with batch statistics"
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0:
            return f"{name or 'body'} applies dropout (p={m.p})"
    return None


def _is_batched(x: Tensor) -> bool:
    """Whether ``x`` is a ``vmap`` batched tensor (its rows are not the real examples)."""
    return bool(torch._C._functorch.is_batchedtensor(x))


@dataclass
class _Store:
    """What a cache and its replicas share: the features, keyed by input row, and the
    parameters they were computed with (the cached body's own)."""

    own: list[Tensor]
    versions: list[int]
    max_bytes: int
    features: dict[tuple[Any, ...], Tensor] = field(default_factory=dict)
    stored_bytes: int = 0
    hits: int = 0
    misses: int = 0
    open: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)


class FeatureCache:
    """A memo of ``body``'s per-example outputs, keyed by the bytes of each input row.

    Call it like the body: ``x [B, *x] -> [B, *f]``. Thread-safe. A deep copy of the body
    (the per-thread replicas of :mod:`metafit.execution.threads`, whose parameters share the
    body's storage) gets a cache of its own forward that shares this one's store; every
    cache of a store stops answering (runs its body) once :meth:`close` is called.

    Args:
        body: the module whose forward is cached (its own ``forward`` is kept as
            :attr:`compute`).
        max_bytes: features stored at most; beyond it new rows are computed, not stored.
    """

    def __init__(self, body: nn.Module, max_bytes: int = DEFAULT_MAX_BYTES,
                 store: _Store | None = None) -> None:
        self.body = body
        self.compute = body.forward  # the forward being cached (a bound method)
        if store is None:
            own: list[Tensor] = list(body.parameters())
            store = _Store(own, [p._version for p in own], int(max_bytes))
        self._store = store

    @property
    def hits(self) -> int:
        """Rows answered from the store."""
        return self._store.hits

    @property
    def misses(self) -> int:
        """Rows computed by the body through the cache."""
        return self._store.misses

    def __deepcopy__(self, memo: dict[int, Any]) -> FeatureCache:
        """The copied body's cache, sharing this store (see the class docstring)."""
        body = copy.deepcopy(self.body, memo)  # the copy being built
        replica = FeatureCache.__new__(FeatureCache)
        memo[id(self)] = replica
        replica.body = body
        replica.compute = types.MethodType(type(body).forward, body)
        replica._store = self._store
        return replica

    def _own_parameters(self, current: list[Tensor]) -> bool:
        """Whether the body runs on the cached parameters' values right now: the tensors
        the cache was filled with, aliases of them, or copies equal to them (a Learner's);
        not adapted ones swapped in by a functional call. The store is emptied first when
        those parameters changed in place since it was filled (an optimizer step)."""
        st = self._store
        versions = [p._version for p in st.own]
        if versions != st.versions:
            self.clear()
            st.versions = versions
        if len(current) != len(st.own):
            return False
        others = sorted(((c, o) for c, o in zip(current, st.own, strict=True)
                         if c.data_ptr() != o.data_ptr()), key=lambda pair: pair[0].numel())
        return all(c.shape == o.shape and torch.equal(c, o) for c, o in others)

    def clear(self) -> None:
        """Forget every stored feature."""
        with self._store.lock:
            self._store.features.clear()
            self._store.stored_bytes = 0

    def close(self) -> None:
        """Stop answering, here and in every replica; forget the features."""
        self._store.open = False
        self.clear()

    def __call__(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        """``body(x)`` for ``x [B, *x]``: stored rows looked up, new ones computed together."""
        st = self._store
        current: list[Tensor] = list(self.body.parameters())  # swapped in, in a functional call
        needs_graph = torch.is_grad_enabled() and any(p.requires_grad for p in current)
        if (not st.open or args or kwargs or _is_batched(x) or x.requires_grad or needs_graph
                or not self._own_parameters(current)):
            return self.compute(x, *args, **kwargs)
        tail, dtype = tuple(x.shape[1:]), str(x.dtype)
        rows = x.detach().cpu().contiguous().numpy()
        keys = [(tail, dtype, row.tobytes()) for row in rows]
        found: dict[tuple[Any, ...], Tensor] = {}
        with st.lock:
            for k in keys:
                if k in st.features:
                    found[k] = st.features[k]
        new = list(dict.fromkeys(k for k in keys if k not in found))  # unique, in order
        if new:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}  # first row of a key
            with torch.no_grad():
                out = self.compute(x[torch.tensor([first[k] for k in new],
                                                  device=x.device)])  # [n, *f]
            with st.lock:
                for k, f in zip(new, out, strict=True):
                    found[k] = f
                    size = f.numel() * f.element_size()
                    if st.stored_bytes + size <= st.max_bytes:
                        st.features[k] = f
                        st.stored_bytes += size
        with st.lock:
            st.hits += len(keys) - len(new)
            st.misses += len(new)
        return torch.stack([found[k] for k in keys])  # [B, *f]


@contextmanager
def cached_body(model: nn.Module, max_bytes: int = DEFAULT_MAX_BYTES
                ) -> Iterator[FeatureCache | None]:
    """Route ``model.body``'s forward through a new :class:`FeatureCache` inside the block.

    Yields the cache, or ``None`` when the body cannot be cached
    (:func:`uncacheable_reason`); the body's own forward is restored on exit. Its own
    parameters may change only in place inside the block (which empties the cache).
    """
    body = getattr(model, "body", None)
    reason = uncacheable_reason(body)
    if reason is not None or body is None:
        log.debug("body features not cached: %s", reason)
        yield None
        return
    had_own = "forward" in body.__dict__
    previous = body.__dict__.get("forward")
    cache = FeatureCache(body, max_bytes)
    body.forward = cache  # an instance attribute: nn.Module.__call__ calls it
    try:
        yield cache
    finally:
        cache.close()  # replicas made inside the block keep it, closed
        if had_own:
            body.forward = previous
        else:
            del body.forward
        log.debug("body feature cache: %d rows computed, %d looked up", cache.misses,
                  cache.hits)
