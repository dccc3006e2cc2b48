"""N-way K-shot episode sampling, vectorised over tasks.

For T tasks the sampler draws, with one seeded ``torch.Generator`` and no Python loop
over tasks or images:

1. ``ways`` distinct classes per task (``argsort`` of uniform keys over the classes,
   restricted to classes with enough examples), in a random order: the j-th chosen class
   gets label j, so label <-> class is a fresh random map per task;
2. ``shots + queries`` distinct examples per chosen class (``argsort`` of uniform keys,
   keys past a class's size set to +inf);
3. a random order of the examples within the support set and within the query set.

``sample(n)`` advances the sampler's generator (so successive calls give fresh tasks and a
sampler rebuilt with the same seed gives the same sequence); ``fixed(n)`` derives a
separate generator from the seed alone, so it returns the same evaluation episodes in
every process and for every algorithm. A ``transform`` (augmentation,
:mod:`metafit.data.transforms`) applies to ``sample`` only, drawing from the same running
generator right after the episodes.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from metafit.data.base import ClassDataset, TaskFamily
from metafit.episodes import Episodes

if TYPE_CHECKING:
    from metafit.data.transforms import EpisodeTransform

__all__ = ["EpisodeSampler"]

_FIXED_STREAM = 0x5EED_F1ED  # offsets the seed of the fixed-episode generator


def _check_positive(**numbers: int) -> None:
    for name, value in numbers.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


class EpisodeSampler:
    """Draws N-way K-shot Q-query episodes from a :class:`ClassDataset` (or the K-shot
    tasks of a :class:`TaskFamily`, where ``ways`` is ignored).

    Args:
        dataset: the classes to draw from.
        ways: N, classes per task.
        shots: K, support examples per class.
        queries: Q, query examples per class.
        seed: seeds both ``sample`` (a running stream) and ``fixed`` (a stream of its own).
        transform: augmentation of what ``sample`` draws (never of ``fixed``), called as
            ``transform(episodes, generator)`` with the running generator.

    Raises:
        ValueError: on a non-positive number, ``ways`` above the number of classes, or
            fewer than ``ways`` classes holding ``shots + queries`` examples.
    """

    def __init__(
        self,
        dataset: ClassDataset | TaskFamily,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        seed: int = 0,
        transform: EpisodeTransform | None = None,
    ) -> None:
        self.dataset = dataset
        self.is_task_family = isinstance(dataset, TaskFamily) and not isinstance(
            dataset, ClassDataset
        )
        if self.is_task_family:
            ways = 1 if ways is None else ways
        _check_positive(ways=ways, shots=shots, queries=queries)
        self.ways, self.shots, self.queries, self.seed = ways, shots, queries, int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.transform = transform
        self._fixed_cache: dict[int, Episodes] = {}
        if not self.is_task_family:
            self._validate(dataset)  # type: ignore[arg-type]

    def _validate(self, ds: ClassDataset) -> None:
        num_classes = len(ds.classes)
        if self.ways > num_classes:
            raise ValueError(
                f"ways={self.ways} exceeds the {num_classes} classes of the dataset"
            )
        need = self.shots + self.queries
        self._eligible = torch.nonzero(ds.counts >= need).flatten()  # [C_ok]
        short = torch.nonzero(ds.counts < need).flatten().tolist()
        named = ", ".join(f"'{ds.classes[c]}' ({int(ds.counts[c])})" for c in short[:5])
        named += f", ... ({len(short)} in all)" if len(short) > 5 else ""
        if len(self._eligible) < self.ways:
            smallest = int(ds.counts.min()) if num_classes else 0
            raise ValueError(
                f"shots + queries = {self.shots} + {self.queries} = {need} examples per class "
                f"are needed, but only {len(self._eligible)} of {num_classes} classes have "
                f"that many (smallest class: {smallest} examples; short: {named}); "
                f"ways={self.ways} needs {self.ways} such classes"
            )
        if short:
            warnings.warn(f"{len(short)} of {num_classes} classes have fewer than shots + "
                          f"queries = {need} examples and are never sampled: {named}",
                          stacklevel=3)
        self._max_count = int(ds.counts.max())

    # -- state (explicit, for checkpoint/resume) -------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The sampler's random state, to store in a checkpoint."""
        return {"seed": self.seed, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state saved by :meth:`state_dict`."""
        self.generator.set_state(state["generator"])

    # -- sampling ----------------------------------------------------------------------
    def sample(self, n: int) -> Episodes:
        """``n`` fresh tasks from the running generator, augmented by ``transform`` (if any)."""
        _check_positive(n=n)
        episodes = self._draw(n, self.generator)
        if self.transform is not None:  # augmentation drawn from the same stream
            episodes = self.transform(episodes, self.generator)
        return episodes

    def fixed(self, n: int) -> Episodes:
        """The same ``n`` evaluation tasks for this seed, in every process and call."""
        _check_positive(n=n)
        if n not in self._fixed_cache:
            self._fixed_cache[n] = self._draw(n, self.fixed_generator())
        return self._fixed_cache[n]

    def fixed_indices(self, n: int) -> Episodes:
        """The episodes of :meth:`fixed` with the dataset's global example indices in place
        of the examples (``support_x [n, N*K]``, ``query_x [n, N*Q]``, long): what a
        report needs to show the raw examples (a text dataset's sentences) behind them.

        Raises:
            ValueError: a task family (its examples are generated, not indexed).
        """
        _check_positive(n=n)
        if self.is_task_family:
            raise ValueError("a task family's examples have no dataset indices")
        return self._draw(n, self.fixed_generator(), gather=False)

    def fixed_generator(self) -> torch.Generator:
        """A fresh generator of the stream :meth:`fixed` draws from (a task family's task
        parameters, e.g. sinusoid amplitudes and phases, are its first draws)."""
        return torch.Generator().manual_seed(self.seed ^ _FIXED_STREAM)

    def _draw(self, n: int, gen: torch.Generator, gather: bool = True) -> Episodes:
        if self.is_task_family:
            fam: TaskFamily = self.dataset  # type: ignore[assignment]
            return fam.sample_episodes(n, self.shots, self.queries, gen)
        ds: ClassDataset = self.dataset  # type: ignore[assignment]
        n_way, k, q = self.ways, self.shots, self.queries
        eligible = self._eligible
        # 1. classes: the `ways` largest of uniform keys = a uniform random ordered subset.
        keys = torch.rand(n, len(eligible), generator=gen)  # [T, C_ok]
        classes = eligible[keys.topk(n_way, dim=1, sorted=True).indices]  # [T, N]
        # 2. examples: k+q distinct positions within each chosen class.
        counts = ds.counts[classes]  # [T, N]
        ex_keys = torch.rand(n, n_way, self._max_count, generator=gen)  # [T, N, M]
        pos = torch.arange(self._max_count)  # [M]
        ex_keys.masked_fill_(pos >= counts.unsqueeze(-1), float("inf"))
        local = ex_keys.argsort(dim=-1)[..., : k + q]  # [T, N, K+Q]
        index = ds.offsets[classes].unsqueeze(-1) + local  # [T, N, K+Q]
        labels = torch.arange(n_way).view(1, n_way, 1)  # [1, N, 1]
        # 3. shuffle the order of examples inside the support and the query set.
        s_order = torch.rand(n, n_way * k, generator=gen).argsort(dim=1)  # [T, N*K]
        q_order = torch.rand(n, n_way * q, generator=gen).argsort(dim=1)  # [T, N*Q]
        s_idx = index[..., :k].reshape(n, n_way * k).gather(1, s_order)  # [T, N*K]
        q_idx = index[..., k:].reshape(n, n_way * q).gather(1, q_order)  # [T, N*Q]
        s_lab = labels.expand(n, n_way, k).reshape(n, n_way * k).gather(1, s_order)
        q_lab = labels.expand(n, n_way, q).reshape(n, n_way * q).gather(1, q_order)
        return Episodes(
            support_x=ds.gather(s_idx) if gather else s_idx,  # [T, N*K, *x]
            support_y=s_lab,  # [T, N*K]
            query_x=ds.gather(q_idx) if gather else q_idx,  # [T, N*Q, *x]
            query_y=q_lab,  # [T, N*Q]
            classes=classes,  # [T, N]
        )

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.dataset!r}, ways={self.ways}, shots={self.shots}, "
            f"queries={self.queries}, seed={self.seed})"
        )
