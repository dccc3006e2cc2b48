#!/usr/bin/env bash
# The speed benchmark on a lent GPU (issue 5), one prepared run of at most ~9.5 minutes:
#   1. tests/test_cuda_graphs.py on the GPU (captured meta-gradients = eager ones, float64);
#   2. MAML / FOMAML / ANIL with the tasks batched by vmap and replayed as a CUDA graph,
#      against higher, TorchOpt and the plain per-task loop, with peak memory;
#   3. Reptile and ProtoNet (no graph path) against the peers, with peak memory;
#   4. the per-task path replayed as a graph, and eager vmap (what the graph adds), against
#      the loop; 5. TF32 on (PyTorch's cuDNN default) for MAML.
# Carry .gpu/whl (higher, TorchOpt, pydantic and their needs for Python 3.12).
# Usage (device tool): bash benchmarks/gpu/bench.sh   (writes under $OUT)
set -u
source benchmarks/gpu/setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >> "$OUT/env.txt" 2>&1
python3 -c "import sys, torch; print(sys.version); print('torch', torch.__version__, torch.cuda.get_device_name())" >> "$OUT/env.txt" 2>&1
stamp "setup done"
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graphs.py > "$OUT/pytest.txt" 2>&1
stamp "pytest done (rc $?)"

run() {  # run SECONDS JSON ARGS...: one bench invocation, its table appended to bench.txt
  local limit=$1 json=$2 rc; shift 2
  echo "## metafit bench --device cuda --problems omniglot $*" >> "$OUT/bench.txt"
  timeout "$limit" python3 -m metafit.cli.bench --device cuda --problems omniglot "$@" \
    --json "$OUT/$json" >> "$OUT/bench.txt" 2>&1
  rc=$?
  stamp "$json done (rc $rc)"
  return $rc
}
if run 200 graph_vmap.json --algorithms maml fomaml anil --batching vmap --cuda-graph --memory --repeats 3; then
  run 70 others.json --algorithms reptile protonet --memory --repeats 3
  run 80 graph_loop.json --algorithms maml fomaml anil --batching loop --cuda-graph --peers loop --repeats 3
  run 45 eager_vmap.json --algorithms maml fomaml anil --batching vmap --steps 1 --peers loop --repeats 3
  run 40 tf32.json --algorithms maml --batching vmap --cuda-graph --tf32 --peers loop --repeats 3
else  # no graph path: the eager rows instead
  run 70 others.json --algorithms reptile protonet --memory --repeats 3
  run 170 eager_vmap.json --algorithms maml fomaml anil --batching vmap --memory --repeats 3
fi
stamp "all done"
