"""N-way K-shot episode sampling, vectorised over tasks.

For T tasks the sampler draws, with one seeded ``torch.Generator`` and no Python loop
over tasks or images:

1. ``ways`` distinct classes per task (``argsort`` of uniform keys over the classes,
   restricted to classes with enough examples), in a random order: the j-th chosen class
   gets label j, so label <-> class is a fresh random map per task;
2. ``shots + queries`` distinct examples per chosen class (``argsort`` of uniform keys,
   keys past a class's size set to +inf);
3. a random order of the examples within the support set and within the query set.

Two options restrict the draw (Lake et al. 2015's within-alphabet one-shot task):
``groups [C]`` (a group id per class) makes every task take its classes from one group,
chosen uniformly among the groups with at least ``ways`` drawable classes; ``slots [E]``
(a slot per example, e.g. who drew it) makes every class of a task take its support from
the same ``shots`` slots and its queries from ``queries`` other slots, drawn per task.

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
        groups: ``long [C]``, the group of each class: a task's classes share a group.
        slots: ``long [E]``, the slot (0..D-1) of each example: a task's support comes
            from ``shots`` slots and its queries from ``queries`` others, the same for all
            its classes; every drawable class must hold each slot exactly once.

    Raises:
        ValueError: on a non-positive number, ``ways`` above the number of classes, or
            fewer than ``ways`` classes holding ``shots + queries`` examples; with
            ``groups``, no group holding ``ways`` such classes; with ``slots``, fewer than
            ``shots + queries`` slots or a class without exactly one example per slot.
    """

    def __init__(
        self,
        dataset: ClassDataset | TaskFamily,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        seed: int = 0,
        transform: EpisodeTransform | None = None,
        groups: torch.Tensor | None = None,
        slots: torch.Tensor | None = None,
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
        self._group_of: torch.Tensor | None = None  # [C_ok] group of each drawable class
        self._slot_table: torch.Tensor | None = None  # [C, D] example of class c in slot d
        if (groups is not None or slots is not None) and self.is_task_family:
            raise ValueError("groups and slots restrict the classes of a dataset; a task "
                             "family has none")
        if not self.is_task_family:
            self._validate(dataset)  # type: ignore[arg-type]
            if groups is not None:
                self._validate_groups(dataset, groups)  # type: ignore[arg-type]
            if slots is not None:
                self._validate_slots(dataset, slots)  # type: ignore[arg-type]

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

    def _validate_groups(self, ds: ClassDataset, groups: torch.Tensor) -> None:
        groups = torch.as_tensor(groups, dtype=torch.long)
        if groups.shape != (len(ds.classes),):
            raise ValueError(f"groups must hold one group id per class ({len(ds.classes)}), "
                             f"got shape {tuple(groups.shape)}")
        self._group_of = groups[self._eligible]  # [C_ok]
        ids, sizes = torch.unique(self._group_of, return_counts=True)
        self._groups_ok = ids[sizes >= self.ways]  # [G_ok]
        if not len(self._groups_ok):
            raise ValueError(f"ways={self.ways} classes from one group are needed, but the "
                             f"largest group holds {int(sizes.max()) if len(sizes) else 0} "
                             "drawable classes")

    def _validate_slots(self, ds: ClassDataset, slots: torch.Tensor) -> None:
        slots = torch.as_tensor(slots, dtype=torch.long)
        if slots.shape != (len(ds),):
            raise ValueError(f"slots must hold one slot per example ({len(ds)}), got shape "
                             f"{tuple(slots.shape)}")
        width = int(slots.max()) + 1 if len(slots) else 0
        if width < self.shots + self.queries:
            raise ValueError(f"shots + queries = {self.shots + self.queries} slots are "
                             f"needed per class, but the examples have {width}")
        classes = torch.repeat_interleave(torch.arange(len(ds.classes)), ds.counts)  # [E]
        table = torch.full((len(ds.classes), width), -1, dtype=torch.long)
        filled = torch.zeros(len(ds.classes), width, dtype=torch.long)
        ok = slots >= 0
        table[classes[ok], slots[ok]] = torch.arange(len(ds))[ok]
        filled.index_put_((classes[ok], slots[ok]), torch.ones_like(slots[ok]),
                          accumulate=True)
        wrong = (filled != 1).any(1) | (ds.counts != width)  # [C]
        bad = self._eligible[wrong[self._eligible]].tolist()
        if bad:
            raise ValueError(
                f"every class must hold exactly one example in each of the {width} slots; "
                f"{len(bad)} do not, e.g. '{ds.classes[bad[0]]}' (slots "
                f"{slots[classes == bad[0]].tolist()})")
        self._slot_table = table  # [C, D]

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
        if self._group_of is not None:  # one group per task; its classes only
            pick = self._groups_ok[torch.randint(len(self._groups_ok), (n,), generator=gen)]
        keys = torch.rand(n, len(eligible), generator=gen)  # [T, C_ok]
        if self._group_of is not None:
            keys.masked_fill_(self._group_of.unsqueeze(0) != pick.unsqueeze(1), -1.0)
        classes = eligible[keys.topk(n_way, dim=1, sorted=True).indices]  # [T, N]
        # 2. examples: k+q distinct positions within each chosen class.
        if self._slot_table is not None:  # support slots, then query slots, per task
            width = self._slot_table.shape[1]
            chosen = torch.rand(n, width, generator=gen).argsort(dim=1)[:, : k + q]  # [T, K+Q]
            index = self._slot_table[classes].gather(  # [T, N, K+Q]
                2, chosen.unsqueeze(1).expand(n, n_way, k + q))
        else:
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
