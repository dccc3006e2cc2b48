#!/usr/bin/env bash
# For the next GPU (issue 5; the 2026-12-01 lease ended before it ran): Reptile and
# ProtoNet with the tasks batched by vmap, the GPU's default since batching auto follows
# the device, against the peers. Carry .gpu/whl.
set -u
source benchmarks/gpu/setup.sh
timeout 100 python3 -m metafit.cli.bench --device cuda --problems omniglot \
  --algorithms reptile protonet --memory --repeats 3 --json "$OUT/batched.json" \
  > "$OUT/bench.txt" 2>&1
echo "bench rc $?" >> "$OUT/env.txt"
