"""Training checkpoints: what ``last.pt`` and ``best.pt`` hold, and where training starts.

A training checkpoint holds everything needed to resume exactly: the algorithm, the outer
optimizer and its schedule, the training sampler's and torch's random state, the
trainer's counters (``state``, a plain dict), the recipe and the number of training
classes. A distributed run (:mod:`metafit.distributed`) adds ``world_size`` and every
rank's sampler and torch random state (``rank_states``, in rank order); such a checkpoint
resumes only with the same number of processes. Files are written and read by
:class:`~metafit.runs.directory.RunDir` (atomic, digest-checked, never unpickled).

Training into a directory starts from one of three points (:func:`starting_point`): its
own ``last.pt`` (resume; ``best.pt`` when it stopped before its first ``last.pt``, a
whole training checkpoint too), the best checkpoint of the recipe's ``init_from`` run (warm
start), or nothing. A warm start from a run of the same algorithm loads everything; from
a run of another algorithm it loads the model's body only (:func:`restore_warm_start`:
a classifier pre-trained by ``finetune`` starting a ProtoNet, Meta-Baseline's two
stages). :class:`~metafit.runs.session.TrainingSession` puts these together for a process
training into a directory.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn

from metafit.config.recipe import Recipe
from metafit.distributed import DistContext, all_gather_object
from metafit.runs.directory import (
    CheckpointError,
    RunDir,
    check_architecture,
    load_checkpoint,
    restore_state,
)

__all__ = ["RESUMABLE_CHANGES", "Stateful", "Resumable", "Start", "training_checkpoint",
           "restore_training_checkpoint", "restore_warm_start", "starting_point",
           "warm_start_scope"]

#: Recipe keys that may differ when training again into an existing run directory.
RESUMABLE_CHANGES = ("iterations", "patience", "time_budget", "task_workers",
                     "vmap_chunk", "batching", "checkpoint_every", "checkpoint_minutes",
                     "cuda_graphs", "cudnn_benchmark", "precision", "mlflow", "mlflow_uri",
                     "mlflow_experiment", "tensorboard")


class Stateful(Protocol):
    """Anything with ``state_dict`` / ``load_state_dict`` (a scheduler, a sampler)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any], /) -> Any: ...


@dataclass(frozen=True)
class Resumable:
    """The objects of a training run that a checkpoint captures and restores.

    ``params``: the trainable meta-parameters (compared across the ranks of a distributed
    run before every save); ``recipe`` and ``num_train_classes`` are recorded to rebuild
    the algorithm later (:func:`metafit.runs.trained.load_trained`). ``optimizer``: a
    torch optimizer, or any outer step with a state (meta-RL's TRPO step has an empty
    one); ``scheduler``: its learning-rate schedule, ``None`` for none (saved as ``{}``).
    ``sampler``: the training tasks' stream (an ``EpisodeSampler``, or meta-RL's
    ``TaskSampler`` with its rollouts' generator).
    """

    algorithm: nn.Module
    optimizer: Stateful
    scheduler: Stateful | None
    sampler: Stateful
    params: list[nn.Parameter]
    recipe: Recipe
    num_train_classes: int | None


class Start(NamedTuple):
    """Where training into a directory starts: ``kind`` is ``"resume"`` (its own
    ``last.pt``, or ``best.pt`` where no ``last.pt`` was written yet), ``"warm"``
    (``init_from``'s best) or ``None`` (from scratch, with no ``checkpoint``);
    ``source`` names the checkpoint's file for messages."""

    kind: str | None
    checkpoint: dict[str, Any] | None
    source: str


def training_checkpoint(parts: Resumable, counters: dict[str, Any],
                        dist: DistContext) -> dict[str, Any]:
    """The checkpoint of ``parts`` and the trainer's ``counters``, to write with
    :meth:`~metafit.runs.directory.RunDir.save_checkpoint`.

    Collective in a distributed run: every rank must call it (each rank's random state is
    gathered; every rank gets the whole checkpoint).

    Raises:
        RuntimeError: the ranks' meta-parameters differ (a bug in the distributed set-up).
    """
    payload = {
        "algorithm": parts.algorithm.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": {} if parts.scheduler is None else parts.scheduler.state_dict(),
        "sampler": parts.sampler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "state": counters,
        "recipe": parts.recipe.applicable_dump(),
        "num_train_classes": parts.num_train_classes,
    }
    if dist.enabled:
        payload.update(_rank_states(parts, dist))
    return payload


def _rank_states(parts: Resumable, dist: DistContext) -> dict[str, Any]:
    """``world_size`` and every rank's random state (checking on the way that the ranks
    still hold identical meta-parameters)."""
    mine = {"sampler": parts.sampler.state_dict(), "torch_rng": torch.get_rng_state(),
            "parameters": _digest(parts.params)}
    states = all_gather_object(mine, dist)
    if len({s.pop("parameters") for s in states}) > 1:
        raise RuntimeError("the ranks' meta-parameters have diverged (a rank stepped on "
                           "other gradients); this is a bug in the distributed setup")
    return {"world_size": dist.world_size, "rank_states": states}


def restore_training_checkpoint(parts: Resumable, ckpt: dict[str, Any], source: str,
                                dist: DistContext) -> dict[str, Any]:
    """Load a checkpoint made by :func:`training_checkpoint` into ``parts`` and
    torch's random state (this rank's share of it); returns the trainer's counters.

    Raises:
        CheckpointError: written by another number of processes, for another
            architecture, or by ``metafit ensemble`` (no training state to resume).
    """
    if "ensemble_of" in ckpt:
        members = ckpt["ensemble_of"]
        said = ", ".join(map(str, members[:16])) if isinstance(members, list) else "?"
        raise CheckpointError(
            f"{source} is an ensemble merged by `metafit ensemble` (of {said}): it holds "
            "no training state and trains no further; train its members, then merge them "
            "again")
    saved_world = ckpt.get("world_size", 1)
    if not isinstance(saved_world, int) or isinstance(saved_world, bool) or saved_world < 1:
        raise CheckpointError(f"{source}: 'world_size' must be a positive integer, not "
                              f"{str(saved_world)[:40]!r}")
    if saved_world != dist.world_size:
        raise CheckpointError(
            f"{source} was written by a run of {saved_world} process(es), but this run "
            f"has {dist.world_size}: resume it with the same number of processes "
            f"(torchrun --nproc_per_node/--nnodes), or train into a new --out")
    restore_state(parts.algorithm, ckpt, source)
    with _field(source, "optimizer"):
        parts.optimizer.load_state_dict(ckpt["optimizer"])
    if parts.scheduler is not None:
        with _field(source, "scheduler"):
            parts.scheduler.load_state_dict(ckpt["scheduler"])
    with _field(source, "rank_states"):
        own = ckpt["rank_states"][dist.rank] if dist.enabled else ckpt
    with _field(source, "sampler"):
        parts.sampler.load_state_dict(own["sampler"])
    with _field(source, "torch_rng"):
        torch.set_rng_state(own["torch_rng"])
    counters = ckpt.get("state")
    if not (isinstance(counters, dict) and isinstance(counters.get("iteration"), int)
            and counters["iteration"] >= 0):
        raise CheckpointError(f"{source}: 'state' must be the trainer's counters, with an "
                              "integer 'iteration' >= 0")
    return dict(counters)


@contextlib.contextmanager
def _field(source: str, name: str) -> Iterator[None]:
    """Turn a failure to restore the checkpoint's field ``name`` (missing, or of another
    shape or type than this run's) into a :class:`CheckpointError` naming both."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        detail = f"{type(e).__name__}: {str(e)[:200]}"
        raise CheckpointError(f"{source}: its '{name}' cannot be restored into this run "
                              f"({detail})") from None


def starting_point(run: RunDir, recipe: Recipe) -> Start:
    """Where training ``recipe`` into ``run`` starts (:class:`Start`).

    Raises:
        ValueError: ``run`` holds a run of another recipe (beyond
            :data:`RESUMABLE_CHANGES`).
        CheckpointError: the checkpoint to start from does not load.
    """
    if run.exists():
        saved = run.read_recipe()
        differ = [k for k, v in recipe.model_dump().items()
                  if getattr(saved, k) != v and k not in RESUMABLE_CHANGES]
        if differ:
            raise ValueError(
                f"{run.path} holds a run of another recipe (differs in "
                f"{', '.join(differ)}); choose a new --out"
            )
        # best.pt is a whole training checkpoint too: a run stopped after its first
        # validation but before its first last.pt (or a warm start, whose starting point
        # is scored and saved as best.pt at iteration 0) resumes from it exactly, rather
        # than start again over its own metric records (or from scratch, losing the
        # warm start)
        for which in ("last", "best"):
            if run.has_checkpoint(which):
                path = run.checkpoint(which)
                return Start("resume", load_checkpoint(path), str(path))
    elif recipe.init_from:
        path = RunDir(recipe.init_from).trained_checkpoint("best")
        return Start("warm", load_checkpoint(path), str(path))
    return Start(None, None, "")


#: The prefix of the body's tensors in an algorithm's ``state_dict``.
BODY_PREFIX = "model.body."


def warm_start_scope(module: nn.Module, ckpt: dict[str, Any], algorithm: str) -> str:
    """What a warm start of the ``algorithm`` module ``module`` takes from the training
    checkpoint ``ckpt``: ``"all"`` when ``ckpt`` was written by a run of the same
    algorithm or holds exactly ``module``'s tensors, else ``"body"`` (another algorithm's
    head, learned rates or pre-training head do not apply)."""
    previous = (ckpt.get("recipe") or {}).get("algorithm")
    saved = ckpt["algorithm"]
    own = module.state_dict()
    same = set(own) == set(saved) and all(
        tuple(saved[k].shape) == tuple(t.shape) for k, t in own.items())
    return "all" if previous == algorithm or same else "body"


def restore_warm_start(module: nn.Module, ckpt: dict[str, Any], source: str,
                       algorithm: str) -> str:
    """Load the warm start ``ckpt`` into the ``algorithm`` module ``module``: all of it
    (:func:`~metafit.runs.directory.restore_state`) or, from a run of another algorithm,
    the tensors of ``model.body`` only, the rest keeping its initial values. Returns
    the :func:`warm_start_scope`.

    Raises:
        CheckpointError: the checkpoint (or its body) is of another architecture.
    """
    scope = warm_start_scope(module, ckpt, algorithm)
    if scope == "all":
        restore_state(module, ckpt, source)
        return scope
    body = getattr(getattr(module, "model", None), "body", None)
    if not isinstance(body, nn.Module):
        raise CheckpointError(f"{source} is a run of another algorithm; only a model's body "
                              f"carries over, and this {type(module).__name__} has none")
    state = {k.removeprefix(BODY_PREFIX): v for k, v in ckpt["algorithm"].items()
             if k.startswith(BODY_PREFIX)}
    check_architecture(body, state, f"{source} (its model.body)")
    body.load_state_dict(state)
    return scope


def _digest(params: list[nn.Parameter]) -> str:
    """A hash of the exact bytes of ``params`` (to compare ranks cheaply)."""
    h = hashlib.sha1(usedforsecurity=False)
    for p in params:
        h.update(p.detach().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
