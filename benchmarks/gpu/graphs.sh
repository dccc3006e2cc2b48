#!/usr/bin/env bash
# Second GPU run (issue 5): end-to-end `metafit train` speed by batching mode and CUDA
# graphs (benchmarks/gpu/train_speed.py on the shipped Omniglot recipes), cuDNN's
# benchmark mode for second-order MAML, and the peak memory of the per-task graph path.
# Carry .gpu/whl (pydantic and the peers) and .gpu/omniglot (the two small Omniglot zips).
set -u
source benchmarks/gpu/setup.sh
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >> "$OUT/env.txt" 2>&1
stamp "setup done"
timeout 150 python3 benchmarks/gpu/train_speed.py --data-root .gpu/omniglot --iterations 40 \
  --json "$OUT/train_maml.json" > "$OUT/train.txt" 2>&1
stamp "train maml done (rc $?)"
timeout 50 python3 benchmarks/gpu/train_speed.py --recipe omniglot_5w1s_fomaml \
  --data-root .gpu/omniglot --iterations 40 --modes loop "vmap + CUDA graph" \
  --json "$OUT/train_fomaml.json" >> "$OUT/train.txt" 2>&1
stamp "train fomaml done (rc $?)"
timeout 60 python3 -m metafit.cli.bench --device cuda --problems omniglot --algorithms maml \
  --batching vmap --cuda-graph --cudnn-benchmark --peers loop --repeats 3 \
  --json "$OUT/cudnn_benchmark.json" > "$OUT/bench.txt" 2>&1
stamp "cudnn benchmark done (rc $?)"
timeout 70 python3 -m metafit.cli.bench --device cuda --problems omniglot --algorithms maml \
  --batching loop --cuda-graph --peers loop --memory --repeats 3 \
  --json "$OUT/graph_loop_memory.json" >> "$OUT/bench.txt" 2>&1
stamp "all done (rc $?)"
