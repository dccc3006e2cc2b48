"""The meta-training loop.

One loop serves every algorithm: each iteration samples a meta-batch of episodes, asks the
algorithm for its meta-gradients (``{name: tensor}``), clips them by global norm, and lets
any torch optimizer step on them (optax-style: the algorithm computes, the optimizer
updates). Every ``val_every`` iterations the algorithm is scored on fixed validation
episodes; the best score is kept as ``checkpoints/best.pt`` and ``patience`` validations
without improvement stop the run early. ``checkpoints/last.pt`` holds everything needed to
resume exactly: algorithm, optimizer, schedule, the sampler's and torch's random state and
the running metric window, so a resumed deterministic run logs the same metrics as an
uninterrupted one.

Under ``torchrun`` (:mod:`metafit.distributed`, ``docs/distributed.md``) each rank samples
its share of the meta-batch from its own seeded stream, the meta-gradients are averaged
across ranks before the one outer step every rank takes, validation episodes are split
across ranks and their scores gathered, and only rank 0 writes files or prints. A
checkpoint then holds every rank's sampler and torch random state, and may only be
resumed with the same number of processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from metafit.algorithms.base import Algorithm
from metafit.algorithms.from_recipe import build_algorithm
from metafit.config.recipe import Recipe
from metafit.data.base import ClassDataset
from metafit.data.sampler import EpisodeSampler
from metafit.data.splits import load_split
from metafit.distributed import (
    DistContext,
    all_gather_object,
    all_reduce_mean,
    broadcast_module,
    broadcast_object,
    current_context,
    rank_seed,
    run_on_main,
    shard_sizes,
)
from metafit.episodes import Episodes
from metafit.evaluation.feature_cache import cached_body
from metafit.evaluation.protocol import evaluate
from metafit.execution.cuda_graphs import GraphedMetaGradients
from metafit.models.tokenizer import TokenMasker
from metafit.runs.directory import CheckpointError, RunDir, load_checkpoint, restore_state
from metafit.runs.lock import LOCK_NAME, RunLock
from metafit.runs.trained import split_sampler

__all__ = ["Trainer", "TrainState", "ValidationHook", "train", "lr_factor"]

log = logging.getLogger(__name__)

#: Called after each validation with (iteration, score); returning True stops the run
#: (status ``stopped_early``, reason ``stopped_by_hook``), e.g. a tuning pruner. In a
#: distributed run rank 0's answer is the one every rank follows.
ValidationHook = Callable[[int, float], bool]

#: Test-only hook: rank 0 kills its own process (SIGKILL) right after finishing this
#: iteration, to test resuming a distributed run that died mid-way. Never set it otherwise.
ENV_CRASH_AT = "METAFIT_TEST_CRASH_AT"

#: Recipe keys that may differ when training again into an existing run directory.
RESUMABLE_CHANGES = ("iterations", "patience", "time_budget", "task_workers",
                     "vmap_chunk", "batching", "checkpoint_every", "checkpoint_minutes",
                     "cuda_graphs", "cudnn_benchmark")


def lr_factor(recipe: Recipe) -> Callable[[int], float]:
    """Multiplier of ``outer_lr`` at step i: linear warm-up, then constant/cosine/linear."""
    warm, total, kind = recipe.warmup, recipe.iterations, recipe.lr_schedule

    def factor(i: int) -> float:
        if warm and i < warm:
            return (i + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (i - warm) / max(1, total - warm))
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress  # linear decay to 0 (Reptile's annealed outer step)

    return factor


def _optimizer(recipe: Recipe, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.outer_lr, weight_decay=recipe.weight_decay)
    cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=recipe.outer_lr, weight_decay=recipe.weight_decay)


@dataclass
class TrainState:
    """Counters of a run, saved in every checkpoint."""

    iteration: int = 0
    best_score: float | None = None
    best_iteration: int = 0
    since_best: int = 0
    window: dict[str, float] = field(default_factory=dict)  # metric sums since last log
    window_count: int = 0
    train_seconds: float = 0.0  # wall-clock time inside meta-training steps, all sessions


class Trainer:
    """Meta-trains ``recipe`` into the run directory ``out``.

    Everything that can fail on bad input (data, episode sizes, algorithm options) is built
    in ``__init__``, before the run directory is created. ``dist``: this process's place in
    a distributed run (default: the initialised process group's, else a single process);
    every rank of the group constructs a ``Trainer`` and calls :meth:`fit`.
    """

    def __init__(self, recipe: Recipe, out: str | Path, progress: bool = True,
                 dist: DistContext | None = None,
                 on_validation: ValidationHook | None = None) -> None:
        self.dist = current_context() if dist is None else dist
        self.recipe, self.run = recipe, RunDir(out)
        self.progress = progress and self.dist.is_main
        self.on_validation = on_validation
        if recipe.threads:
            torch.set_num_threads(recipe.threads)
        if recipe.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = recipe.cudnn_benchmark
        self.shares = _meta_batch_shares(recipe, self.dist)
        train_ds = load_split(recipe, "train")
        val_ds = load_split(recipe, "val")
        self.train_sampler = EpisodeSampler(train_ds, recipe.ways, recipe.shots, recipe.queries,
                                            seed=rank_seed(recipe.seed, self.dist.rank))
        self.val_sampler = split_sampler(recipe, "val", val_ds)
        self.masker: TokenMasker | None = None
        if recipe.text_mask:
            self.masker = TokenMasker(recipe.text_model, recipe.text_mask)
        num_classes = len(train_ds.classes) if isinstance(train_ds, ClassDataset) else None
        self.num_train_classes = num_classes
        self.algo = cast(Algorithm, build_algorithm(recipe, num_classes).to(recipe.device))
        broadcast_module(self.algo, self.dist)  # identical meta-parameters by construction
        if self.dist.rank > 0:  # rank 0 keeps the single-process stream
            torch.manual_seed(rank_seed(recipe.seed, self.dist.rank))
        self.params = [p for p in self.algo.parameters() if p.requires_grad]
        #: ``cuda_graphs``: the meta-gradients, captured once and replayed (the parameters
        #: keep their storage: checkpoints load and optimisers step in place).
        self.graphed = GraphedMetaGradients(self.algo) if recipe.cuda_graphs else None
        if not self.params and self.algo.meta_trained:
            raise ValueError(f"algorithm '{recipe.algorithm}' has no trainable parameters "
                             "with this recipe (adapt scope, frozen layers)")
        self.optimizer = _optimizer(recipe, self.params or [nn.Parameter(torch.zeros(0))])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(recipe))
        self.state = TrainState()
        self.higher_is_better = not recipe.is_regression
        self._lock: RunLock | None = None  # rank 0's hold on the run directory
        self._created_dir = False

    # -- checkpoints ---------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        """Everything to resume from. Collective in a distributed run (every rank calls
        it): it gathers each rank's sampler and torch random state."""
        payload = {
            "algorithm": self.algo.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.train_sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "state": asdict(self.state),
            "recipe": self.recipe.model_dump(),
            "num_train_classes": self.num_train_classes,
        }
        if self.dist.enabled:
            payload.update(self._rank_states())
        return payload

    def _rank_states(self) -> dict[str, Any]:
        """``world_size`` and every rank's random state (checking on the way that the
        ranks still hold identical meta-parameters)."""
        mine = {"sampler": self.train_sampler.state_dict(), "torch_rng": torch.get_rng_state(),
                "parameters": _digest(self.params)}
        states = all_gather_object(mine, self.dist)
        if len({s.pop("parameters") for s in states}) > 1:
            raise RuntimeError("the ranks' meta-parameters have diverged (a rank stepped on "
                               "other gradients); this is a bug in the distributed setup")
        return {"world_size": self.dist.world_size, "rank_states": states}

    def _save(self, which: str) -> None:
        """Write ``checkpoints/{which}.pt`` (rank 0; every rank must call this)."""
        payload = self._payload()
        if self.dist.is_main:
            self.run.save_checkpoint(which, payload)

    def _restore(self, ckpt: dict[str, Any], source: str) -> None:
        saved_world = int(ckpt.get("world_size", 1))
        if saved_world != self.dist.world_size:
            raise CheckpointError(
                f"{source} was written by a run of {saved_world} process(es), but this run "
                f"has {self.dist.world_size}: resume it with the same number of processes "
                f"(torchrun --nproc_per_node/--nnodes), or train into a new --out")
        restore_state(self.algo, ckpt, source)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        own = ckpt["rank_states"][self.dist.rank] if self.dist.enabled else ckpt
        self.train_sampler.load_state_dict(own["sampler"])
        torch.set_rng_state(own["torch_rng"])
        self.state = TrainState(**ckpt["state"])
        if self.dist.is_main:
            self.run.truncate_metrics(self.state.iteration)
            log.info("resumed %s at iteration %d", self.run.path, self.state.iteration)

    def _claim_dir(self) -> None:
        """Rank 0: create the run directory if needed and lock it against other processes
        for the whole of :meth:`fit` (:class:`~metafit.runs.lock.RunLock`)."""
        self._created_dir = not self.run.path.exists()
        self.run.path.mkdir(parents=True, exist_ok=True)
        lock = self.run.lock()
        lock.acquire()
        self._lock = lock

    def _release_dir(self) -> None:
        """Rank 0: drop the lock; remove the directory again when this trainer created it
        and a failed start left nothing in it but the lock file."""
        if self._lock is None:
            return
        self._lock.release()
        self._lock = None
        path = self.run.path
        if self._created_dir and {p.name for p in path.iterdir()} <= {LOCK_NAME}:
            (path / LOCK_NAME).unlink(missing_ok=True)
            path.rmdir()

    def _read_dir(self) -> tuple[str | None, dict[str, Any] | None, str]:
        """Rank 0: lock the run directory, check it against the recipe and read the
        checkpoint to start from: ``("resume", last.pt)``, ``("warm", init_from's best)``
        or nothing."""
        self._claim_dir()
        run = self.run
        if run.exists():
            saved = run.read_recipe()
            differ = [k for k, v in self.recipe.model_dump().items()
                      if getattr(saved, k) != v and k not in RESUMABLE_CHANGES]
            if differ:
                raise ValueError(
                    f"{run.path} holds a run of another recipe (differs in "
                    f"{', '.join(differ)}); choose a new --out"
                )
            last = run.checkpoint("last")
            if run.has_checkpoint("last"):
                return "resume", load_checkpoint(last), str(last)
        elif self.recipe.init_from:
            path = RunDir(self.recipe.init_from).trained_checkpoint("best")
            return "warm", load_checkpoint(path), str(path)
        return None, None, ""

    def _prepare_dir(self) -> None:
        """Create or resume the run directory. Rank 0 alone reads and writes it; the other
        ranks receive the checkpoint from rank 0 (no shared file system needed)."""
        kind, ckpt, source = run_on_main(self._read_dir, self.dist)
        if kind == "resume" and ckpt is not None:
            self._restore(ckpt, source)
        elif kind == "warm" and ckpt is not None:
            restore_state(self.algo, ckpt, source)
            if self.dist.is_main:
                log.info("warm start from %s", source)
        if self.dist.is_main:
            self.run.remove_stale_temporaries()
            self.run.write_config(self.recipe)
            self._set_status("running", iteration=self.state.iteration)

    def _set_status(self, status: str, **info: Any) -> None:
        """``status.json`` (rank 0; with ``world_size`` in a distributed run)."""
        if self.dist.enabled:
            info["world_size"] = self.dist.world_size
        if self.dist.is_main:
            self.run.set_status(status, **info)

    # -- the loop ------------------------------------------------------------------------
    def _log(self, record: dict[str, Any], writer: Any) -> None:
        if not self.dist.is_main:
            return
        with self.run.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    writer.add_scalar(f"{record['split']}/{key}", value, record["iteration"])

    def validate(self) -> dict[str, Any]:
        """Score on the fixed validation episodes: accuracy or MSE, with 95% CI (split
        across the ranks of a distributed run; every rank gets the full result)."""
        result = evaluate(self.algo, self.val_sampler, episodes=self.recipe.val_episodes,
                          dist=self.dist)
        return {result.metric: result.mean, "ci95": result.ci95}

    def _sample(self) -> Episodes:
        """This rank's share of the meta-batch (all of it with one process)."""
        count = self.shares[self.dist.rank]
        episodes = self.train_sampler.sample(count)
        if self.masker is not None:  # augmentation drawn from the sampler's stream
            episodes = self.masker.episodes(episodes, self.train_sampler.generator)
        return episodes.to(self.recipe.device)

    def _meta_gradients(self, episodes: Episodes) -> tuple[dict[str, Tensor], dict[str, float]]:
        """The algorithm's meta-gradients and metrics, replayed as a CUDA graph with
        ``cuda_graphs``."""
        if self.graphed is None:
            return self.algo.meta_gradients(episodes)
        return self.graphed(episodes)

    def _update(self, episodes: Episodes) -> dict[str, float]:
        """One outer step on the meta-gradients of ``episodes``, averaged over the ranks
        (weighted by their task counts); returns the averaged metrics."""
        grads, metrics = self._meta_gradients(episodes)
        count, total = float(len(episodes)), float(sum(self.shares))
        grads, metrics = all_reduce_mean(grads, metrics, count, total, self.dist)
        named = dict(self.algo.named_parameters())
        for name, g in grads.items():
            named[name].grad = g
        if self.recipe.grad_clip:
            metrics["grad_norm"] = float(
                torch.nn.utils.clip_grad_norm_(self.params, self.recipe.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {k: float(v) for k, v in metrics.items()}

    def _step(self) -> dict[str, float]:
        return self._update(self._sample())

    def _out_of_time(self) -> bool:
        budget = self.recipe.time_budget
        return budget is not None and self.state.train_seconds >= budget

    def _checkpoint_due(self, saved_at: float) -> bool:
        """True once ``checkpoint_minutes`` of meta-training steps have passed since
        ``saved_at`` (``train_seconds`` then)."""
        minutes = self.recipe.checkpoint_minutes
        return minutes is not None and self.state.train_seconds - saved_at >= 60 * minutes

    def _after_validation(self, score: float) -> bool:
        """Update the best checkpoint; True when patience is exhausted."""
        st = self.state
        # A non-finite score (a diverged adaptation) never counts as an improvement, and
        # any finite score beats a non-finite best.
        best = st.best_score
        if best is None or not math.isfinite(best):
            better = math.isfinite(score)
        else:
            better = score > best if self.higher_is_better else score < best
        if better:
            st.best_score, st.best_iteration, st.since_best = score, st.iteration, 0
            self._save("best")
            return False
        st.since_best += 1
        return bool(self.recipe.patience and st.since_best >= self.recipe.patience)

    def fit(self) -> TrainState:
        """Train to ``iterations`` (or early stop); returns the final counters.

        An exception or Ctrl-C leaves ``status.json`` at ``failed`` / ``interrupted`` (never
        ``complete``); training again into the same directory resumes from ``last.pt``.

        Raises:
            RunLockedError: another process is training into the directory.
        """
        try:
            self._prepare_dir()
            try:
                return self._fit()
            except KeyboardInterrupt:
                self._set_status("interrupted", iteration=self.state.iteration)
                raise
            except Exception as e:
                self._set_status("failed", iteration=self.state.iteration, error=repr(e))
                raise
        finally:
            self._release_dir()

    def _no_training(self) -> TrainState:
        """An algorithm with nothing to meta-train: validate once, save, mark complete."""
        st = self.state
        val = self.validate()
        self._log({"iteration": 0, "split": "val", "seconds": 0.0, **val}, None)
        st.best_score, st.best_iteration = next(iter(val.values())), 0
        self._save("best")
        self._save("last")
        self._set_status("complete", iteration=0, best_iteration=0,
                         best_score=st.best_score, reason="not meta-trained",
                         train_seconds=0.0)
        if self.dist.is_main:
            log.info("%s: %s is not meta-trained; validation %s", self.recipe.name,
                     self.recipe.algorithm, ", ".join(f"{k} {v:.4g}" for k, v in val.items()))
        return st

    def _timed_step(self) -> dict[str, float]:
        """:meth:`_step`, adding its wall-clock time to ``train_seconds`` (rank 0's time on
        every rank when a time budget or timed checkpoints must act on every rank at the
        same iteration)."""
        t_step = time.perf_counter()
        metrics = self._step()
        self.state.train_seconds += time.perf_counter() - t_step
        timed = (self.recipe.time_budget is not None
                 or self.recipe.checkpoint_minutes is not None)
        if self.dist.enabled and timed:
            self.state.train_seconds = broadcast_object(self.state.train_seconds, self.dist)
        return metrics

    def _fit(self) -> TrainState:
        from tqdm.auto import tqdm

        if not self.algo.meta_trained:
            return self._no_training()

        r, st = self.recipe, self.state
        writer = self._tensorboard() if r.tensorboard and self.dist.is_main else None
        bar = tqdm(total=r.iterations, initial=st.iteration, disable=not self.progress,
                   desc=r.name, unit="it", dynamic_ncols=True)
        stopped, reason, t0 = False, "", time.perf_counter()
        saved_at = st.train_seconds  # of the last save of last.pt (or of the start)
        if self._out_of_time():
            stopped, reason = True, "time_budget"  # resumed with no time left
        self.algo.train()
        with self._frozen_body_cache() as cache:
            if cache is not None and self.dist.is_main:
                log.info("%s: the body is frozen; its features of each example are computed "
                         "once and reused across iterations", r.name)
            while st.iteration < r.iterations and not stopped:
                metrics = self._timed_step()
                st.iteration += 1
                out_of_time = self._out_of_time()
                for k, v in metrics.items():
                    st.window[k] = st.window.get(k, 0.0) + v
                st.window_count += 1
                last = st.iteration == r.iterations or out_of_time
                if st.iteration % r.log_every == 0 or last:
                    record: dict[str, Any] = {k: v / st.window_count
                                              for k, v in st.window.items()}
                    record.update(iteration=st.iteration, split="train",
                                  lr=self.optimizer.param_groups[0]["lr"],
                                  seconds=round(st.train_seconds, 3))
                    self._log(record, writer)
                    st.window, st.window_count = {}, 0
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items()
                                     if k in ("loss", "accuracy", "mse")})
                if st.iteration % r.val_every == 0 or last:
                    val = self.validate()
                    self._log({"iteration": st.iteration, "split": "val",
                               "seconds": round(st.train_seconds, 3), **val}, writer)
                    score = next(iter(val.values()))
                    stopped = self._after_validation(score)
                    reason = "patience" if stopped else reason
                    if not stopped and self._hook_stops(st.iteration, score):
                        stopped, reason = True, "stopped_by_hook"
                    line = f"iteration {st.iteration}: validation " + ", ".join(
                        f"{k} {v:.4g}" for k, v in val.items())
                    if self.progress:
                        bar.write(line)
                    elif self.dist.is_main:
                        log.info("%s: %s", r.name, line)
                if (st.iteration % r.checkpoint_every == 0 or stopped or last
                        or self._checkpoint_due(saved_at)):
                    self._save("last")
                    saved_at = st.train_seconds
                self._crash_if_asked(st.iteration)
                bar.update(1)
                if out_of_time and not stopped:
                    if self.dist.is_main:
                        log.info("%s: time budget of %g s reached at iteration %d", r.name,
                                 r.time_budget, st.iteration)
                    stopped, reason = True, "time_budget"
        bar.close()
        status = "stopped_early" if stopped else "complete"
        self._set_status(status, iteration=st.iteration, best_iteration=st.best_iteration,
                         best_score=st.best_score, reason=reason or None,
                         train_seconds=round(st.train_seconds, 2),
                         seconds_this_session=round(time.perf_counter() - t0, 2))
        if writer is not None:
            writer.close()
        return st

    def _frozen_body_cache(self) -> AbstractContextManager[Any]:
        """While nothing in ``model.body`` is trained (the ``head`` adapt scope, a frozen
        encoder), its features of each training example are computed once for all
        iterations (:mod:`metafit.evaluation.feature_cache`; yields the cache, or ``None``)."""
        body = getattr(self.algo.model, "body", None)
        if body is None or any(p.requires_grad for p in body.parameters()):
            return nullcontext()
        return cached_body(self.algo.model)

    def _hook_stops(self, iteration: int, score: float) -> bool:
        """The :data:`ValidationHook`'s answer (rank 0's, shared with every rank)."""
        if self.on_validation is None:
            return False
        stop = bool(self.on_validation(iteration, score)) if self.dist.is_main else False
        if self.dist.enabled:
            stop = bool(broadcast_object(stop, self.dist))
        return stop

    def _crash_if_asked(self, iteration: int) -> None:
        """The test-only :data:`ENV_CRASH_AT` hook: rank 0 dies by SIGKILL (no clean-up, as
        in a machine failure) after finishing the given iteration."""
        at = os.environ.get(ENV_CRASH_AT)
        if at and self.dist.is_main and iteration == int(at):
            log.warning("%s=%s: killing rank 0 (test hook)", ENV_CRASH_AT, at)
            os.kill(os.getpid(), signal.SIGKILL)

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ValueError("tensorboard=true needs the tensorboard package "
                             "(pip install tensorboard)") from e
        return SummaryWriter(str(self.run.path / "tensorboard"))


def train(recipe: Recipe, out: str | Path, progress: bool = True,
          dist: DistContext | None = None,
          on_validation: ValidationHook | None = None) -> TrainState:
    """Meta-train ``recipe`` into ``out`` (resuming if ``out`` holds an unfinished run);
    ``dist`` as for :class:`Trainer`; ``on_validation(iteration, score)`` returning True
    stops the run early."""
    return Trainer(recipe, out, progress=progress, dist=dist, on_validation=on_validation).fit()


def _meta_batch_shares(recipe: Recipe, ctx: DistContext) -> list[int]:
    """Tasks of the meta-batch each rank samples (every rank needs at least one)."""
    if recipe.meta_batch < ctx.world_size:
        raise ValueError(f"meta_batch={recipe.meta_batch} is smaller than the "
                         f"{ctx.world_size} processes of this run: every process needs at "
                         "least one task; raise meta_batch or use fewer processes")
    return shard_sizes(recipe.meta_batch, ctx.world_size)


def _digest(params: list[nn.Parameter]) -> str:
    """A hash of the exact bytes of ``params`` (to compare ranks cheaply)."""
    h = hashlib.sha1(usedforsecurity=False)
    for p in params:
        h.update(p.detach().reshape(-1).cpu().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
