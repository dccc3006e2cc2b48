"""docs/rl.md's example runs as written and takes TRPO steps."""

from __future__ import annotations

import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "rl.md"


def test_the_rl_doc_example_runs_and_trains() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```$", DOC.read_text(encoding="utf-8"),
                        flags=re.S | re.M)
    assert len(blocks) == 1
    scope: dict[str, object] = {}
    exec(compile(blocks[0], str(DOC), "exec"), scope)  # noqa: S102 - our own documentation
    curve = scope["curve"]
    assert isinstance(curve, torch.Tensor) and curve.shape == (8, 4)
    assert bool(curve.isfinite().all())
    metrics = scope["metrics"]
    assert isinstance(metrics, dict) and metrics["step_fraction"] > 0  # a step was taken
