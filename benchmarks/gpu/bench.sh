#!/usr/bin/env bash
# The speed benchmark on a lent GPU (issue 5): conv4 Omniglot shape, every algorithm at
# K = 1 and 5 against higher, TorchOpt and the plain loop; then MAML, FOMAML and ANIL with
# the tasks batched by vmap (conv4's BatchNorm is second-order correct there since 2d4abee). Carry .gpu/whl (higher, TorchOpt, pydantic for python 3.12).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl > "$OUT/env.txt" 2>&1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
timeout 145 python3 -m metafit.bench --device cuda --problems omniglot --memory --repeats 3 \
  --json "$OUT/bench_loop.json" > "$OUT/bench.txt" 2>&1
timeout 40 python3 -m metafit.bench --device cuda --problems omniglot --algorithms maml fomaml anil \
  --batching vmap --memory --repeats 3 --json "$OUT/bench_vmap.json" >> "$OUT/bench.txt" 2>&1
