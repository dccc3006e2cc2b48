"""Build ``.gpu/``, the folder a lent GPU machine is sent (``benchmarks/gpu/run.sh``).

    python benchmarks/gpu/prepare.py --data-root ../shared/data

The machine runs Python 3.12 with torch, transformers and peft but no pydantic, higher or
TorchOpt, cannot reach a package index, and takes at most 64 MiB with the working tree.
So this writes, into ``.gpu/`` (ignored by git: add ``/.gpu/`` to ``.git/info/exclude``):

* ``whl/``: wheels of pydantic (+ its core and helpers), higher, TorchOpt (+ optree,
  graphviz) for CPython 3.12 on manylinux x86-64;
* ``banking77/``: BANKING77's ``train.csv`` and ``test.csv``;
* ``minilm_b77.tar.xz``: all-MiniLM-L6-v2 with the token-embedding rows of every token
  that BANKING77 (train and test) never produces set to zero, so that it compresses to
  fit the lease (RESULTS.md, "BANKING77 on a GPU"); on BANKING77 the encoder's outputs are
  unchanged (checked here: the largest difference of the last hidden states is printed,
  and must be 0).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

WHEELS = ["pydantic", "pydantic-core", "annotated-types", "typing-inspection", "higher",
          "torchopt", "optree", "graphviz"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64"]


def main() -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModel, AutoTokenizer

    from metafit.models.tokenizer import default_model_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", required=True, help="the folder holding banking77/")
    p.add_argument("--out", default=".gpu")
    args = p.parse_args()
    out = Path(args.out)
    (out / "whl").mkdir(parents=True, exist_ok=True)
    plats = [a for plat in PLATFORMS for a in ("--platform", plat)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
                    *plats, "-d", str(out / "whl"), *WHEELS], check=True)
    data = Path(args.data_root) / "banking77"
    shutil.copytree(data, out / "banking77", dirs_exist_ok=True)
    texts = [r["text"] for name in ("train.csv", "test.csv")
             for r in csv.DictReader((data / name).open(encoding="utf-8"))]
    src = Path(default_model_dir())
    tok = AutoTokenizer.from_pretrained(src)
    used = set(tok.all_special_ids)
    for i in range(0, len(texts), 1000):
        for ids in tok(texts[i:i + 1000])["input_ids"]:
            used.update(ids)
    dst = out / "minilm_b77"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    weights = load_file(src / "model.safetensors")
    key = next(k for k in weights if k.endswith("word_embeddings.weight"))
    keep = torch.zeros(weights[key].shape[0], dtype=torch.bool)
    keep[sorted(used)] = True
    weights[key] = weights[key] * keep[:, None]
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    batch = tok(texts[-64:], padding=True, return_tensors="pt")
    with torch.no_grad():
        diff = (AutoModel.from_pretrained(src)(**batch).last_hidden_state
                - AutoModel.from_pretrained(dst)(**batch).last_hidden_state).abs().max()
    print(f"kept {int(keep.sum())} of {len(keep)} token rows; max output difference {diff}")
    if float(diff) != 0.0:
        raise SystemExit("the pruned encoder differs on BANKING77: not writing it")
    with tarfile.open(out / "minilm_b77.tar.xz", "w:xz") as tar:
        tar.add(dst, arcname="minilm_b77")
    shutil.rmtree(dst)


if __name__ == "__main__":
    main()
