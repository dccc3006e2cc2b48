"""Small fixtures for the deployment tests: tiny trained runs (conv4 on 8x8 class-folder
images, the tiny BERT on a CSV of synthetic intents), support folders and CSVs."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metafit.config.schema import Recipe, make_recipe
from metafit.training.trainer import Trainer
from test_trainer import classification_recipe, image_folder
from text_fixtures import sentences, session_dir, shared_model_dir, write_csv

SIZE = 8  # image side of the tiny image runs


def pattern(c: int, i: int, size: int = SIZE) -> np.ndarray:
    """uint8 ``[size, size]``: class ``c``'s bright block at a class-specific place, noise
    seeded by ``(c, i)`` (the layout of test_trainer.image_folder)."""
    rng = np.random.default_rng([c, i])
    img = rng.random((size, size)) * 60
    r, col = divmod(c, 4)
    s = size // 8
    img[r * 4 * s:(r * 4 + 3) * s, col * 2 * s:(col * 2 + 2) * s] += 180
    return img.clip(0, 255).astype(np.uint8)


def support_folder(root: Path, classes: int = 3, per_class: int = 2, size: int = SIZE,
                   mode: str = "L") -> Path:
    """``root/<label>/<i>.png`` with labels ``"label_c"``."""
    for c in range(classes):
        d = root / f"label_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(pattern(c, i, size)).convert(mode).save(d / f"{i}.png")
    return root


@functools.cache
def image_run(algorithm: str = "protonet") -> Path:
    """A run trained for 6 iterations on tiny class-folder images (session-wide)."""
    root = session_dir("metafit-deploy-")
    data = image_folder(root / "data")
    Trainer(classification_recipe(data, algorithm), root / "run", progress=False).fit()
    return root / "run"


def text_recipe(algorithm: str = "linear_probe", **extra: Any) -> Recipe:
    values: dict[str, Any] = dict(
        name=f"tiny_text_{algorithm}", dataset="text_csv", model="text",
        text_model=str(shared_model_dir()), max_length=16, ways=3, shots=2, queries=2,
        algorithm=algorithm, adapt="head" if algorithm == "linear_probe" else "lora",
        lora_r=2, inner_lr=0.5 if algorithm != "linear_probe" else 0.05, inner_steps=1,
        eval_inner_steps=40 if algorithm == "linear_probe" else 2, meta_batch=2,
        iterations=2, val_every=2, val_episodes=2, test_episodes=4, seed=0)
    values.update(extra)
    return make_recipe(values)


@functools.cache
def text_run() -> Path:
    """A linear-probe run on the tiny BERT (no meta-training; session-wide)."""
    root = session_dir("metafit-deploy-text-")
    csv = write_csv(root / "intents.csv", sentences(10, 6, seed=0))
    recipe = text_recipe("linear_probe", data_root=str(csv), split_classes=False)
    Trainer(recipe, root / "run", progress=False).fit()
    return root / "run"
