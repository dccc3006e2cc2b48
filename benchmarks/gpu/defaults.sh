#!/usr/bin/env bash
# Third GPU run (issue 5): the defaults on a GPU (batching auto = vmap there, cuDNN
# autotuning on) end to end, with and without CUDA graphs; the batching and graph tests.
# Carry .gpu/whl and .gpu/omniglot.
set -u
source benchmarks/gpu/setup.sh
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py \
  tests/test_batching.py > "$OUT/pytest.txt" 2>&1
stamp "pytest done (rc $?)"
timeout 60 python3 benchmarks/gpu/train_speed.py --data-root .gpu/omniglot --iterations 40 \
  --modes default "default + CUDA graph" --json "$OUT/train_default.json" > "$OUT/train.txt" 2>&1
stamp "defaults done (rc $?)"
timeout 40 python3 benchmarks/gpu/train_speed.py --data-root .gpu/omniglot --iterations 40 \
  --modes default "default + CUDA graph" --set cudnn_benchmark=false \
  --json "$OUT/train_no_autotune.json" >> "$OUT/train.txt" 2>&1
stamp "all done (rc $?)"
