"""The README's Python example runs as written and meta-trains: its code blocks are
executed in order, and the optimizer steps they take must change the parameters."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(text: str) -> list[str]:
    """The bodies of the fenced ```python blocks of ``text``, in order."""
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_readme_has_a_python_example() -> None:
    blocks = python_blocks(README.read_text(encoding="utf-8"))
    assert blocks and any("import metafit" in b for b in blocks)


def test_the_readme_example_takes_optimizer_steps(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    before: dict[int, torch.Tensor] = {}  # id(parameter) -> its value before the first step
    stepped: list[torch.optim.Optimizer] = []

    def record(optimizer: torch.optim.Optimizer, *_: Any) -> None:
        stepped.append(optimizer)
        for group in optimizer.param_groups:
            for p in group["params"]:
                before.setdefault(id(p), p.detach().clone())

    monkeypatch.chdir(tmp_path)  # anything the example writes stays out of the repository
    handle = register_optimizer_step_pre_hook(record)
    namespace: dict[str, Any] = {"__name__": "readme"}
    try:
        for block in python_blocks(README.read_text(encoding="utf-8")):
            exec(compile(block, str(README), "exec"), namespace)  # noqa: S102 - our README
    finally:
        handle.remove()

    assert len(stepped) >= 2, "the example takes no (or a single) optimizer step"
    params = [p for group in stepped[-1].param_groups for p in group["params"]]
    assert params and all(torch.isfinite(p).all() for p in params)
    changed = [not torch.equal(before[id(p)], p.detach()) for p in params]
    assert all(changed), f"{changed.count(False)} of {len(params)} parameters never moved"
    metrics = namespace["metrics"]
    assert math.isfinite(metrics["loss"]) and 0.0 <= metrics["accuracy"] <= 1.0
    preds = namespace["preds"]
    assert preds.shape == (75, 5) and torch.isfinite(preds).all()
