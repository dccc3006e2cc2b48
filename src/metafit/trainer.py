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
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from metafit.algorithms.base import Algorithm
from metafit.config import Recipe
from metafit.data.base import ClassDataset
from metafit.datasets import load_split
from metafit.evaluation import evaluate
from metafit.factory import build_algorithm
from metafit.rundir import RunDir, load_checkpoint, restore_state
from metafit.runs import split_sampler
from metafit.sampler import EpisodeSampler

__all__ = ["Trainer", "TrainState", "ValidationHook", "train", "lr_factor"]

log = logging.getLogger(__name__)

#: Called after each validation with (iteration, score); returning True stops the run
#: (status ``stopped_early``, reason ``stopped_by_hook``), e.g. a tuning pruner.
ValidationHook = Callable[[int, float], bool]

#: Recipe keys that may differ when training again into an existing run directory.
RESUMABLE_CHANGES = ("iterations", "patience", "time_budget", "task_workers",
                     "vmap_chunk")


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
    in ``__init__``, before the run directory is created.
    """

    def __init__(self, recipe: Recipe, out: str | Path, progress: bool = True,
                 on_validation: ValidationHook | None = None) -> None:
        self.recipe, self.run, self.progress = recipe, RunDir(out), progress
        self.on_validation = on_validation
        if recipe.threads:
            torch.set_num_threads(recipe.threads)
        train_ds = load_split(recipe, "train")
        val_ds = load_split(recipe, "val")
        self.train_sampler = EpisodeSampler(train_ds, recipe.ways, recipe.shots, recipe.queries,
                                            seed=recipe.seed)
        self.val_sampler = split_sampler(recipe, "val", val_ds)
        num_classes = len(train_ds.classes) if isinstance(train_ds, ClassDataset) else None
        self.num_train_classes = num_classes
        self.algo = cast(Algorithm, build_algorithm(recipe, num_classes).to(recipe.device))
        self.params = [p for p in self.algo.parameters() if p.requires_grad]
        if not self.params and self.algo.meta_trained:
            raise ValueError(f"algorithm '{recipe.algorithm}' has no trainable parameters "
                             "with this recipe (adapt scope, frozen layers)")
        self.optimizer = _optimizer(recipe, self.params or [nn.Parameter(torch.zeros(0))])
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(recipe))
        self.state = TrainState()
        self.higher_is_better = not recipe.is_regression

    # -- checkpoints ---------------------------------------------------------------------
    def _payload(self) -> dict[str, Any]:
        return {
            "algorithm": self.algo.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.train_sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "state": asdict(self.state),
            "recipe": self.recipe.model_dump(),
            "num_train_classes": self.num_train_classes,
        }

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        restore_state(self.algo, ckpt, str(path))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.train_sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.state = TrainState(**ckpt["state"])
        self.run.truncate_metrics(self.state.iteration)
        log.info("resumed %s at iteration %d", self.run.path, self.state.iteration)

    def _warm_start(self, source: str) -> None:
        path = RunDir(source).trained_checkpoint("best")
        restore_state(self.algo, load_checkpoint(path), str(path))
        log.info("warm start from %s", path)

    def _prepare_dir(self) -> None:
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
            if run.checkpoint("last").is_file():
                self._restore(run.checkpoint("last"))
        elif self.recipe.init_from:
            self._warm_start(self.recipe.init_from)
        run.path.mkdir(parents=True, exist_ok=True)
        run.write_config(self.recipe)
        run.set_status("running", iteration=self.state.iteration)

    # -- the loop ------------------------------------------------------------------------
    def _log(self, record: dict[str, Any], writer: Any) -> None:
        with self.run.metrics.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if writer is not None:
            for key, value in record.items():
                if isinstance(value, float):
                    writer.add_scalar(f"{record['split']}/{key}", value, record["iteration"])

    def validate(self) -> dict[str, Any]:
        """Score on the fixed validation episodes: accuracy or MSE, with 95% CI."""
        result = evaluate(self.algo, self.val_sampler, episodes=self.recipe.val_episodes)
        return {result.metric: result.mean, "ci95": result.ci95}

    def _step(self) -> dict[str, float]:
        episodes = self.train_sampler.sample(self.recipe.meta_batch).to(self.recipe.device)
        grads, metrics = self.algo.meta_gradients(episodes)
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

    def _out_of_time(self) -> bool:
        budget = self.recipe.time_budget
        return budget is not None and self.state.train_seconds >= budget

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
            self.run.save_checkpoint("best", self._payload())
            return False
        st.since_best += 1
        return bool(self.recipe.patience and st.since_best >= self.recipe.patience)

    def fit(self) -> TrainState:
        """Train to ``iterations`` (or early stop); returns the final counters.

        An exception or Ctrl-C leaves ``status.json`` at ``failed`` / ``interrupted`` (never
        ``complete``); training again into the same directory resumes from ``last.pt``.
        """
        self._prepare_dir()
        try:
            return self._fit()
        except KeyboardInterrupt:
            self.run.set_status("interrupted", iteration=self.state.iteration)
            raise
        except Exception as e:
            self.run.set_status("failed", iteration=self.state.iteration, error=repr(e))
            raise

    def _no_training(self) -> TrainState:
        """An algorithm with nothing to meta-train: validate once, save, mark complete."""
        st = self.state
        val = self.validate()
        self._log({"iteration": 0, "split": "val", "seconds": 0.0, **val}, None)
        st.best_score, st.best_iteration = next(iter(val.values())), 0
        self.run.save_checkpoint("best", self._payload())
        self.run.save_checkpoint("last", self._payload())
        self.run.set_status("complete", iteration=0, best_iteration=0,
                            best_score=st.best_score, reason="not meta-trained",
                            train_seconds=0.0)
        log.info("%s: %s is not meta-trained; validation %s", self.recipe.name,
                 self.recipe.algorithm, ", ".join(f"{k} {v:.4g}" for k, v in val.items()))
        return st

    def _fit(self) -> TrainState:
        from tqdm.auto import tqdm

        if not self.algo.meta_trained:
            return self._no_training()

        r, st = self.recipe, self.state
        writer = self._tensorboard() if r.tensorboard else None
        bar = tqdm(total=r.iterations, initial=st.iteration, disable=not self.progress,
                   desc=r.name, unit="it", dynamic_ncols=True)
        stopped, reason, t0 = False, "", time.perf_counter()
        if self._out_of_time():
            stopped, reason = True, "time_budget"  # resumed with no time left
        self.algo.train()
        while st.iteration < r.iterations and not stopped:
            t_step = time.perf_counter()
            metrics = self._step()
            st.train_seconds += time.perf_counter() - t_step
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
                if not stopped and self.on_validation is not None \
                        and self.on_validation(st.iteration, score):
                    stopped, reason = True, "stopped_by_hook"
                line = f"iteration {st.iteration}: validation " + ", ".join(
                    f"{k} {v:.4g}" for k, v in val.items())
                if self.progress:
                    bar.write(line)
                else:
                    log.info("%s: %s", r.name, line)
            if st.iteration % r.checkpoint_every == 0 or stopped or last:
                self.run.save_checkpoint("last", self._payload())
            bar.update(1)
            if out_of_time and not stopped:
                log.info("%s: time budget of %g s reached at iteration %d", r.name,
                         r.time_budget, st.iteration)
                stopped, reason = True, "time_budget"
        bar.close()
        status = "stopped_early" if stopped else "complete"
        self.run.set_status(status, iteration=st.iteration, best_iteration=st.best_iteration,
                            best_score=st.best_score, reason=reason or None,
                            train_seconds=round(st.train_seconds, 2),
                            seconds_this_session=round(time.perf_counter() - t0, 2))
        if writer is not None:
            writer.close()
        return st

    def _tensorboard(self) -> Any:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ValueError("tensorboard=true needs the tensorboard package "
                             "(pip install tensorboard)") from e
        return SummaryWriter(str(self.run.path / "tensorboard"))


def train(recipe: Recipe, out: str | Path, progress: bool = True,
          on_validation: ValidationHook | None = None) -> TrainState:
    """Meta-train ``recipe`` into ``out`` (resuming if ``out`` holds an unfinished run).
    ``on_validation(iteration, score)`` returning True stops the run early."""
    return Trainer(recipe, out, progress=progress, on_validation=on_validation).fit()
