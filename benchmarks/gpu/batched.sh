#!/usr/bin/env bash
# For the next GPU (issue 5; the 2026-12-01 lease ended before it ran): Reptile and
# ProtoNet with the tasks batched by vmap, the GPU's default since batching auto follows
# the device, against the peers. Carry .gpu/whl.
set -u
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl > "$OUT/env.txt" 2>&1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
timeout 100 python3 -m metafit.bench --device cuda --problems omniglot \
  --algorithms reptile protonet --memory --repeats 3 --json "$OUT/batched.json" \
  > "$OUT/bench.txt" 2>&1
echo "bench rc $?" >> "$OUT/env.txt"
