"""End-to-end meta-training speed of ``metafit train`` on a GPU, by task batching mode.

What users run, not a kernel benchmark: the shipped recipe (sampling from the cached
Omniglot tensor, the meta-gradient, Adam, logging), ``iterations`` steps in a fresh
process per mode, tasks/s from the run's ``metrics.jsonl`` after the first (warm-up) step.
The modes run one after another; each run's first training losses are printed so that
equal computations can be seen to give equal losses.

    python benchmarks/gpu/train_speed.py --data-root ../shared/data/omniglot --device cuda
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

MODES = {
    "default": [],
    "default + CUDA graph": ["cuda_graphs=true"],
    "loop": ["batching=loop"],
    "vmap": ["batching=vmap"],
    "vmap + CUDA graph": ["batching=vmap", "cuda_graphs=true"],
    "loop + CUDA graph": ["batching=loop", "cuda_graphs=true"],
}


def tasks_per_second(run: Path) -> tuple[float, list[float]]:
    """(tasks/s after the first step, the first five training losses) of a finished run."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    batch = int(yaml.safe_load((run / "config.yaml").read_text())["meta_batch"])
    first, last = train[0], train[-1]
    tps = (last["iteration"] - first["iteration"]) * batch / (last["seconds"] - first["seconds"])
    return tps, [round(r["loss"], 5) for r in train[:5]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="omniglot_5w1s_maml")
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--modes", nargs="+", default=list(MODES)[2:], choices=list(MODES))
    parser.add_argument("--set", nargs="*", default=[], help="more recipe overrides")
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            out = Path(tmp) / mode.replace(" ", "_").replace("+", "")
            its = args.iterations
            cmd = [sys.executable, "-m", "metafit.cli", "train", args.recipe,
                   f"data_root={args.data_root}", f"device={args.device}", f"iterations={its}",
                   "log_every=1", f"val_every={its}", "val_episodes=4",
                   f"checkpoint_every={its}", "checkpoint_minutes=null", *MODES[mode],
                   *args.set, "--out", str(out), "--no-progress"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{mode}: failed ({done.returncode})\n{done.stderr[-2000:]}", flush=True)
                continue
            tps, losses = tasks_per_second(out)
            rows.append({"recipe": args.recipe, "mode": mode, "tasks_per_s": tps,
                         "iterations": its, "first_losses": losses, "set": args.set})
            print(f"{args.recipe} {' '.join(args.set)} [{mode}]: {tps:.1f} tasks/s, "
                  f"first losses {losses}", flush=True)
            if args.json_out:
                Path(args.json_out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
