#!/usr/bin/env bash
# One call on a lent GPU machine (see benchmarks/RESULTS.md, "GPU"): the speed benchmark on
# CUDA (issue 5), then BANKING77 rows on the GPU (issue 6). Run from the repository root
# with the carried folder .gpu/ (built by benchmarks/gpu/prepare.py: wheels for the
# packages the machine lacks, the MiniLM directory, BANKING77) and OUT set to a folder for
# the results.
#   bash benchmarks/gpu/run.sh [SECONDS]   # SECONDS: the whole script's wall-clock limit
set -u
LIMIT=${1:-560}
START=$(date +%s)
left() { echo $(( LIMIT - ($(date +%s) - START) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl > "$OUT/env.txt" 2>&1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
tar -xJf .gpu/minilm_b77.tar.xz -C /tmp
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nproc; python3 -c "import sys, torch, transformers, peft, pydantic, higher, torchopt, metafit
print(sys.version); print('torch', torch.__version__, torch.cuda.get_device_name(0))
print('transformers', transformers.__version__, 'peft', peft.__version__, 'torchopt', torchopt.__version__)"
} >> "$OUT/env.txt" 2>&1
echo "setup done at $(( $(date +%s) - START )) s" >> "$OUT/env.txt"
# issue 5: conv4 Omniglot shape, every algorithm, K = 1 and 5, vs higher / TorchOpt / loop
timeout 120 python3 -m metafit.cli.bench --device cuda --problems omniglot --memory --repeats 5 \
  --json "$OUT/bench_loop.json" > "$OUT/bench.txt" 2>&1
timeout 45 python3 -m metafit.cli.bench --device cuda --problems omniglot --algorithms fomaml anil \
  --batching vmap --memory --repeats 5 --json "$OUT/bench_vmap.json" >> "$OUT/bench.txt" 2>&1
echo "bench done at $(( $(date +%s) - START )) s" >> "$OUT/env.txt"
# issue 6: BANKING77 protocol A and B rows, many processes sharing the GPU
python3 benchmarks/gpu/text_jobs.py --data-root .gpu/banking77 --text-model /tmp/minilm_b77 \
  --out /tmp/text_runs --slots 12 --deadline $(( $(left) - 25 )) --budget 60 \
  --results "$OUT/text_rows.jsonl" --failures "$OUT/text_fail.txt" > "$OUT/text_log.txt" 2>&1
echo "all done at $(( $(date +%s) - START )) s" >> "$OUT/env.txt"
