# Sourced by the GPU scripts (bench.sh, graphs.sh, defaults.sh, batched.sh): the output
# folder $OUT, the carried wheels (.gpu/whl: higher, TorchOpt, pydantic and their needs,
# for the machine's Python 3.12) installed on PYTHONPATH, and `stamp`, which logs the
# seconds since the start to $OUT/env.txt. What comes back from $OUT is kept under
# benchmarks/results/<date>/h200/ (the raw output behind RESULTS.md's GPU tables).
OUT=${OUT:-/tmp/bench-out}
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "$1 at $(( $(date +%s) - start )) s" >> "$OUT/env.txt"; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .gpu/whl/*.whl > "$OUT/env.txt" 2>&1
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export METAFIT_CACHE=/tmp/metafit-cache
