"""Behaviour-preserving changes, checked: the metrics of fixed-seed runs before and after.

``record`` trains a few shipped recipes for a few dozen iterations on one thread (and the
tests' tiny text model with ProtoNet) through the real command line, and writes every
metric record but the wall-clock ``seconds`` to a JSON file, with the table
``metafit quickstart --size tiny`` prints. ``compare`` says whether
two such files are identical, record by record, to the last bit.

    python benchmarks/identity.py record before.json --data-root ../shared/data
    (change the code)
    python benchmarks/identity.py record after.json --data-root ../shared/data
    python benchmarks/identity.py compare before.json after.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: (name, recipe, overrides): a few dozen iterations each, one thread.
RUNS = [
    ("sinusoid_maml", "sinusoid_maml", ["iterations=40", "val_every=20", "log_every=1"]),
    ("omniglot_5w1s_protonet", "omniglot_5w1s_protonet", ["iterations=30", "val_every=15",
                                                          "val_episodes=20", "log_every=1"]),
    ("omniglot_5w1s_maml", "omniglot_5w1s_maml", ["iterations=30", "val_every=15",
                                                  "val_episodes=20", "log_every=1"]),
]


def _metafit(*args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    code = "import sys; from metafit.cli.main import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"metafit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def _records(run: Path) -> list[dict[str, Any]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _text_recipe(root: Path) -> Path:
    """The tests' tiny BERT and synthetic intents, as a ProtoNet recipe file."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from text_fixtures import make_model_dir, sentences, write_csv

    model = make_model_dir(root / "bert")
    data = write_csv(root / "intents.csv", sentences(12, 8, seed=0))
    recipe = root / "text_protonet.yaml"
    recipe.write_text("\n".join([
        "name: tiny_text_protonet", "dataset: text_csv", f"data_root: {data}",
        "class_split: [6, 3, 3]", "model: text", f"text_model: {model}", "max_length: 16",
        "ways: 3", "shots: 2",
        "queries: 2", "algorithm: protonet", "adapt: lora", "lora_r: 2", "inner_lr: 0.5",
        "inner_steps: 1", "eval_inner_steps: 2", "meta_batch: 2", "iterations: 6",
        "val_every: 3", "log_every: 1", "val_episodes: 4", "test_episodes: 4", "seed: 0", ""]))
    return recipe


def _quickstart_table(out: Path) -> list[str]:
    """The table rows ``metafit quickstart --size tiny`` prints (accuracies, no times)."""
    text = _metafit("quickstart", "--size", "tiny", "--out", str(out), "--no-progress")
    return [line for line in text.splitlines() if line.startswith("|")]


def record(path: Path, data_root: Path, quickstart: bool) -> None:
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="metafit-identity-") as tmp:
        root = Path(tmp)
        for name, recipe, overrides in RUNS:
            sub = "omniglot" if recipe.startswith("omniglot") else ""
            extra = [f"data_root={data_root / sub}"] if sub else []
            _metafit("train", recipe, *overrides, "threads=1", *extra, "--out",
                     str(root / name), "--no-progress")
            result[name] = _records(root / name)
            print(f"{name}: {len(result[name])} records", flush=True)
        _metafit("train", str(_text_recipe(root)), "threads=1", "--out",
                 str(root / "text_protonet"), "--no-progress")
        result["tiny_text_protonet"] = _records(root / "text_protonet")
        print(f"tiny_text_protonet: {len(result['tiny_text_protonet'])} records", flush=True)
        if quickstart:
            result["quickstart_tiny"] = _quickstart_table(root / "quickstart")
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


def compare(a: Path, b: Path) -> int:
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    same = True
    for name in sorted(set(left) | set(right)):
        if left.get(name) == right.get(name):
            print(f"{name}: identical ({len(left[name])} records)")
            continue
        same = False
        print(f"{name}: DIFFERENT")
        for i, (x, y) in enumerate(zip(left.get(name, []), right.get(name, []), strict=False)):
            if x != y:
                print(f"  first difference at record {i}:\n    {x}\n    {y}")
                break
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record", help="train the fixed-seed runs, write their metrics")
    p.add_argument("out", type=Path)
    p.add_argument("--data-root", type=Path, default=HERE.parent.parent / "shared" / "data")
    p.add_argument("--quickstart", action="store_true", help="also the table of metafit "
                   "quickstart --size tiny (a few CPU-minutes)")
    p = sub.add_parser("compare", help="are two recorded files identical?")
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    args = parser.parse_args(argv)
    if args.command == "record":
        record(args.out, args.data_root.resolve(), args.quickstart)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    raise SystemExit(main())
