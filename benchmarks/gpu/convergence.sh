#!/usr/bin/env bash
# Issue 30, part 4: MAML, FOMAML, Meta-SGD, ANIL and Reptile trained towards convergence
# on Omniglot (the two small background sets, held-out alphabets), MAML again in bf16, and
# ProtoNet's batched speed; each evaluated on 600 test episodes (deployed BatchNorm, 95%
# CI); the table with tasks/s and the fraction of the H200's float32 / TF32 / bf16 limits
# (benchmarks/gpu/convergence.py says how the iterations are cut to fit, and how FLOPs
# are counted). One call of at most ~9.5 minutes on a lent GPU; writes under $OUT:
# convergence.md, convergence.json, convergence.txt (the log), env.txt.
#   bash benchmarks/gpu/convergence.sh [--scale X]       # GPU: carry .gpu/whl and .gpu/omniglot
#     (.gpu/whl: benchmarks/gpu/prepare.py; .gpu/omniglot: mkdir -p .gpu/omniglot &&
#      cp ../shared/data/omniglot/images_background_small*.zip .gpu/omniglot/)
#   bash benchmarks/gpu/convergence.sh --tiny            # CPU, < 1 minute, the same pipeline
# --tiny (or CONVERGENCE_TINY=1) reads the Omniglot zips from $OMNIGLOT (default
# $METAFIT_DATA/omniglot). Nothing is downloaded. Exits non-zero if any step fails.
set -euo pipefail
tiny=${CONVERGENCE_TINY:-0}
if [[ "${1:-}" == "--tiny" ]]; then tiny=1; shift; fi
if [[ "$tiny" == 1 ]]; then
  OUT=${OUT:-/tmp/convergence-tiny}
  mkdir -p "$OUT"
  export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
  data=${OMNIGLOT:-${METAFIT_DATA:-../shared/data}/omniglot}
  python3 benchmarks/gpu/convergence.py --tiny --data-root "$data" --out "$OUT" "$@" \
    2>&1 | tee "$OUT/convergence.txt"
  exit "${PIPESTATUS[0]}"
fi
source benchmarks/gpu/setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >> "$OUT/env.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" >> "$OUT/env.txt" 2>&1
stamp "setup done"
rc=0
timeout 540 python3 benchmarks/gpu/convergence.py --device cuda --data-root .gpu/omniglot \
  --out "$OUT" --work /tmp/convergence-runs --deadline 480 "$@" > "$OUT/convergence.txt" 2>&1 || rc=$?
stamp "convergence done (rc $rc)"
exit "$rc"
