#!/usr/bin/env bash
# One command for a whole check on a lent GPU machine:  bash bench/gpu.sh OUTDIR [STAGES]
# Builds phasor with CUDA kernels, runs the CUDA tests and the GPU benchmarks, and writes logs, build
# info and the benchmark JSON to OUTDIR. The machine has torch, cmake, ninja, pybind11, pytest-xdist
# and scikit-build-core preinstalled and no package registry.
#
# The lease is short (15 device-minutes a task, 10 a command), so the script runs against a time
# budget, GPU_BUDGET_S (default 540 s, counted from its start): every stage gets at most what is
# left, the stages run in order of value, and every log and the JSON are written as they go, so a
# stage cut short still leaves its finished part. One bad kernel cannot hide the others: the tests
# keep going after failures and each op's benchmark runs in its own process.
#
# STAGES (comma-separated, default build,test,benchquick,bench):
#   build       make build with PHASOR_CUDA=ON (architectures: TORCH_CUDA_ARCH_LIST, default 9.0a;
#               at most GPU_BUILD_S seconds, default 400)
#   test        pytest -m cuda (every CUDA test, 8 workers when xdist is there) + tests/test_build.py
#   benchquick  every CUDA bench case without the torch.compile impl (its Triton compile is slow)
#   bench       every CUDA bench case with every impl; its records replace benchquick's
#   cputest     the rest of the suite (CI runs it anyway)
# Files in OUTDIR (the device tool returns at most 8): summary.txt (the end of every stage),
# build.log, build_info.json, tests_cuda.log, bench_cuda.log, bench_cuda.json, tests_cpu.log.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu.sh OUTDIR [build,test,benchquick,bench,cputest]}
STAGES=",${2:-build,test,benchquick,bench},"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export PHASOR_CUDA=${PHASOR_CUDA:-ON}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
export PYTHONUNBUFFERED=1
BUDGET_S=${GPU_BUDGET_S:-540}
T_START=$(date +%s)
PY=.venv/bin/python
# BENCH_DEVICE=cpu runs the bench stages' logic on a CPU machine (a dry run of this script).
BENCH_DEVICE=${BENCH_DEVICE:-cuda}
SUMMARY="$OUT/summary.txt"
BENCH_TMP=$(mktemp -d)
rc=0

stage() { [[ "$STAGES" == *",$1,"* ]]; }
left() { echo $(( BUDGET_S - ($(date +%s) - T_START) )); }
say() { echo "$*" | tee -a "$SUMMARY"; }
# within SECONDS CMD...: run CMD for at most SECONDS, or what is left of the budget if that is less.
within() {
  local s=$1 l; shift
  l=$(left)
  (( s > l )) && s=$l
  if (( s < 10 )); then return 124; fi   # budget spent: the caller reports rc 124
  timeout -k 10 "$s" "$@"
}

say "# gpu.sh $(date -u +%FT%TZ) stages=${STAGES:1:-1} budget=${BUDGET_S}s"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1
  nvcc --version 2>&1 | tail -2
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1
  nproc; } | tee -a "$SUMMARY"

if stage build; then
  t0=$(date +%s)
  if ! within "${GPU_BUILD_S:-400}" make build > "$OUT/build.log" 2>&1; then
    say "BUILD FAILED or timed out after $(( $(date +%s) - t0 ))s"; tail -60 "$OUT/build.log" | tee -a "$SUMMARY"; exit 1
  fi
  say "build: $(( $(date +%s) - t0 ))s"
  $PY -c "import json, phasor; print(json.dumps(phasor.build_info, indent=1))" > "$OUT/build_info.json" 2>&1
  grep -E '"(with_cuda|cuda_archs|torch_version)"' "$OUT/build_info.json" | tee -a "$SUMMARY"
fi

if stage test; then
  t0=$(date +%s)
  xdist=(); $PY -c "import xdist" 2>/dev/null && xdist=(-n 8)
  timeout_flag=(); $PY -c "import pytest_timeout" 2>/dev/null && timeout_flag=(--timeout 300)
  {
    within 120 $PY -m pytest -q -ra -m "not slow" tests/test_build.py
    echo "test_build rc=$?"
    within 300 $PY -m pytest -q -ra -m cuda "${xdist[@]}" "${timeout_flag[@]}" tests
    echo "cuda tests rc=$?"
  } > "$OUT/tests_cuda.log" 2>&1
  r=$(grep -cE '^(test_build|cuda tests) rc=[^0]' "$OUT/tests_cuda.log")
  say "cuda tests: $(( $(date +%s) - t0 ))s"
  grep -E '^(FAILED|ERROR)|rc=|passed|failed' "$OUT/tests_cuda.log" | tail -40 | tee -a "$SUMMARY"
  (( r )) && rc=1
fi

# bench_ops SKIP_IMPLS SECONDS_PER_OP TAG: one process per op, JSON per op, merged into bench_cuda.json.
bench_ops() {
  local skip=$1 per_op=$2 tag=$3 ops op r
  ops=$($PY -c "from phasor.bench.registry import all_cases
print(' '.join(dict.fromkeys(s.op for s in all_cases() if '$BENCH_DEVICE' in s.devices)))")
  for op in $ops; do
    echo "## $tag: $op" >> "$OUT/bench_cuda.log"
    within "$per_op" $PY -m phasor bench --device "$BENCH_DEVICE" --min-run-time 0.2 --op "$op" ${skip:+--skip-impls "$skip"} \
      --json "$BENCH_TMP/$tag-$op.json" >> "$OUT/bench_cuda.log" 2>&1
    r=$?
    (( r )) && say "  bench $tag $op: rc=$r (124: cut by the time limit or the budget)"
  done
  # Records of the full run replace the quick run's for the same (op, case).
  $PY - "$BENCH_TMP" "$OUT/bench_cuda.json" <<'EOF'
import glob, json, os, sys
src, dst = sys.argv[1], sys.argv[2]
runs = sorted(glob.glob(os.path.join(src, "*.json")), key=lambda p: os.path.basename(p).startswith("full-"))
merged, meta = {}, {}
for path in runs:
    data = json.load(open(path))
    meta = {k: v for k, v in data.items() if k != "records"}
    cases = {(r["op"], r["case"]) for r in data["records"]}
    merged = {k: v for k, v in merged.items() if (k[0], k[1]) not in cases}
    merged.update({(r["op"], r["case"], r["impl"]): r for r in data["records"]})
json.dump({**meta, "records": list(merged.values())}, open(dst, "w"), indent=1)
print(f"bench_cuda.json: {len(merged)} records from {len(runs)} runs")
EOF
}

if stage benchquick; then
  t0=$(date +%s)
  bench_ops compile 60 quick
  say "bench (quick): $(( $(date +%s) - t0 ))s"
fi

if stage bench; then
  t0=$(date +%s)
  bench_ops "" 150 full
  say "bench (full): $(( $(date +%s) - t0 ))s"
fi
if stage benchquick || stage bench; then
  # The table a reader wants last: every timed row of both runs (the full run's rows come second).
  grep -E '^## |(True|False)$| error' "$OUT/bench_cuda.log" >> "$SUMMARY"
  grep -qE 'False$|error' "$OUT/bench_cuda.log" && rc=1
fi

if stage cputest; then
  t0=$(date +%s)
  within 900 $PY -m pytest -q -ra -m "not cuda" tests > "$OUT/tests_cpu.log" 2>&1
  r=$?
  say "cpu tests: rc=$r, $(( $(date +%s) - t0 ))s"; tail -15 "$OUT/tests_cpu.log" | tee -a "$SUMMARY"
  (( r )) && rc=1
fi
rm -rf "$BENCH_TMP"
say "gpu.sh: done in $(( $(date +%s) - T_START ))s, rc=$rc"
exit $rc
