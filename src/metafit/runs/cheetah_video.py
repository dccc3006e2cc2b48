"""Half-cheetah before and after adaptation, as an animated GIF.

For a half-cheetah run (``rl_cheetah_dir``, ``rl_cheetah_vel``) the report shows what one
adaptation step does: on fixed held-out tasks (for direction, one running forward and one
backward when the first tasks hold both), the meta-learned policy before adaptation and
after ``steps`` policy-gradient steps, each step taken on the recipe's ``trajectories``
rollouts exactly as the evaluation takes them (:meth:`~metafit.rl.maml.MAMLRL.sample` on
the split's fixed tasks and rollout stream). Each policy then runs one episode with its
mean action (deterministic), rendered by Gymnasium's MuJoCo renderer; a row per task,
before | after side by side, the episode's return in the label.

Rendering needs an OpenGL context without a display: ``MUJOCO_GL=egl`` (set here when
unset) or ``osmesa``. :func:`render_unavailable` says why it cannot run, and the report
writes that sentence instead of a clip.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

from metafit.config.schema import Recipe
from metafit.io import atomic_write_bytes
from metafit.rl.gym_family import HalfCheetahTask
from metafit.rl.maml import MAMLRL
from metafit.rl.tasks import TaskSampler

__all__ = ["CHEETAH_DATASETS", "CheetahClip", "RenderUnavailable", "cheetah_clips",
           "render_unavailable", "write_gif"]

log = logging.getLogger(__name__)

CHEETAH_DATASETS = {"rl_cheetah_dir": "dir", "rl_cheetah_vel": "vel"}


class RenderUnavailable(RuntimeError):
    """MuJoCo cannot render a frame here (no headless OpenGL library); the message says
    why."""


@dataclass
class CheetahClip:
    """One task's episodes: ``frames[policy]`` ``[F, H, W, 3]`` uint8 for the policy
    before adaptation (0) and after the steps (1), their undiscounted returns, the task."""

    task: dict[str, float]
    frames: tuple[np.ndarray, np.ndarray]
    returns: tuple[float, float]
    steps: int


def render_unavailable() -> str | None:
    """``None`` when a MuJoCo frame can be rendered here, else the reason."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        env = HalfCheetahTask("dir", render_mode="rgb_array", width=16, height=16,
                              direction=1.0)
        env.reset(seed=0)
        frame = env.render()
        env.close()
    except Exception as e:  # no GL library, no device: any failure is the reason
        return f"{type(e).__name__}: {e}"
    if not isinstance(frame, np.ndarray) or frame.shape != (16, 16, 3):
        return f"the renderer returned {type(frame).__name__}, not a 16x16 RGB frame"
    return None


def _shown_tasks(recipe: Recipe, sampler: TaskSampler, count: int) -> dict[str, torch.Tensor]:
    """The first ``count`` fixed tasks; for direction, the first forward and the first
    backward one when the first 20 fixed tasks hold both."""
    pool = sampler.fixed(max(count, 20))
    index = list(range(count))
    if CHEETAH_DATASETS[recipe.dataset] == "dir" and count == 2:
        d = pool["direction"]
        forward, backward = (d > 0).nonzero(), (d < 0).nonzero()
        if len(forward) and len(backward):
            index = [int(forward[0]), int(backward[0])]
    return {k: v[index] for k, v in pool.items()}


def _episode(algo: MAMLRL, params: dict[str, torch.Tensor], kind: str, task: dict[str, float],
             horizon: int, size: tuple[int, int], every: int, seed: int
             ) -> tuple[np.ndarray, float]:
    """One deterministic episode (mean actions) of ``params``: frames ``[F, H, W, 3]``
    (every ``every``-th step) and the return."""
    env = HalfCheetahTask(kind, render_mode="rgb_array", width=size[0], height=size[1],
                          **task)
    low, high = env.action_space.low, env.action_space.high
    obs, _ = env.reset(seed=seed)
    frames, total = [env.render()], 0.0
    with torch.no_grad():
        for t in range(horizon):
            out = functional_call(algo.policy, params,
                                  (torch.as_tensor(obs, dtype=torch.float32),))
            action = np.clip(algo.policy.mode(out).numpy(), low, high)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            if (t + 1) % every == 0:
                frames.append(env.render())
            if terminated or truncated:
                break
    env.close()
    return np.stack(frames), total


def cheetah_clips(algo: MAMLRL, recipe: Recipe, sampler: TaskSampler, tasks: int = 2,
                  steps: int = 1, size: tuple[int, int] = (240, 160), every: int = 2
                  ) -> list[CheetahClip]:
    """Clips of the first ``tasks`` fixed tasks of ``sampler`` (module docstring), the
    policy adapted ``steps`` times on ``recipe.trajectories`` rollouts per step.

    Raises:
        ValueError: not a half-cheetah recipe, or a count below 1.
        RenderUnavailable: rendering is unavailable (:func:`render_unavailable`'s reason).
    """
    if recipe.dataset not in CHEETAH_DATASETS:
        raise ValueError(f"clips are for the half-cheetah families "
                         f"({', '.join(CHEETAH_DATASETS)}), got {recipe.dataset}")
    if tasks < 1 or steps < 1 or every < 1:
        raise ValueError(f"need tasks, steps and every >= 1, got {tasks}, {steps}, {every}")
    reason = render_unavailable()
    if reason is not None:
        raise RenderUnavailable(f"MuJoCo cannot render here ({reason}); set MUJOCO_GL=egl "
                                "or osmesa with its library installed")
    kind = CHEETAH_DATASETS[recipe.dataset]
    shown = _shown_tasks(recipe, sampler, tasks)
    family = sampler.family
    with torch.no_grad():
        episode = algo.sample(family.env(shown), recipe.trajectories,
                              sampler.fixed_rollouts(), steps=steps)
        adapted = algo.adapted(episode, graph=False)  # [T, *param]
    before = {n: p.detach() for n, p in algo.policy.named_parameters()}
    clips = []
    for i in range(tasks):
        task = {k: float(v[i]) for k, v in shown.items()}
        after = {n: p[i] for n, p in adapted.items()}
        runs = [_episode(algo, p, kind, task, family.horizon, size, every, recipe.seed + i)
                for p in (before, after)]
        clips.append(CheetahClip(task, (runs[0][0], runs[1][0]), (runs[0][1], runs[1][1]),
                                 steps))
    return clips


def _label(clip: CheetahClip, which: int) -> str:
    task = ", ".join(f"{k} {v:+g}" for k, v in clip.task.items())
    when = "before adaptation" if which == 0 else f"after {clip.steps} step(s)"
    return f"{task}: {when}, return {clip.returns[which]:.0f}"


def write_gif(clips: Sequence[CheetahClip], path: str | Path, fps: int = 20) -> Path:
    """Write ``clips`` as one animated GIF at ``path`` (written to a temporary name, then
    renamed): a row per clip, before | after, a label above each panel. Returns ``path``."""
    from PIL import Image, ImageDraw

    if not clips:
        raise ValueError("no clips to write")
    h, w = clips[0].frames[0].shape[1:3]
    bar = 14
    length = max(len(f) for c in clips for f in c.frames)
    canvas_size = (2 * w, len(clips) * (h + bar))
    images = []
    for t in range(length):
        canvas = Image.new("RGB", canvas_size, "white")
        draw = ImageDraw.Draw(canvas)
        for row, clip in enumerate(clips):
            for col in (0, 1):
                frames = clip.frames[col]
                frame = frames[min(t, len(frames) - 1)]
                x, y = col * w, row * (h + bar)
                canvas.paste(Image.fromarray(frame), (x, y + bar))
                draw.text((x + 3, y + 1), _label(clip, col), fill="black")
        images.append(canvas.convert("P", palette=Image.Palette.ADAPTIVE))
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(1000 / fps), loop=0, optimize=True)
    atomic_write_bytes(Path(path), buffer.getvalue())  # with a report's other files
    return Path(path)
