#!/usr/bin/env bash
# One command for a whole check on a lent GPU machine:  bash bench/gpu.sh OUTDIR [STAGES]
# Builds phasor with CUDA kernels, runs the CUDA tests and the GPU benchmarks, and writes logs, build
# info and the benchmark JSON to OUTDIR. The machine has torch, cmake, ninja, pybind11 and
# scikit-build-core preinstalled and no package registry.
#
# STAGES (comma-separated, default build,test,bench) lets a session split the work over several calls
# when one call is time-limited: later stages reuse the build that is already there.
#   build   make build with PHASOR_CUDA=ON (architectures: TORCH_CUDA_ARCH_LIST, default 9.0a)
#   test    pytest -m cuda (every CUDA test) plus tests/test_build.py
#   cputest the rest of the suite (slow on few cores; CI runs it anyway)
#   bench   python -m phasor bench --device cuda
set -uo pipefail
OUT=${1:?usage: bash bench/gpu.sh OUTDIR [build,test,cputest,bench]}
STAGES=",${2:-build,test,bench},"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export PHASOR_CUDA=${PHASOR_CUDA:-ON}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
rc=0
stage() { [[ "$STAGES" == *",$1,"* ]]; }
elapsed() { echo "$1: rc=$2, $(( $(date +%s) - $3 ))s"; }

if stage build; then
  { nvidia-smi; nvcc --version; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/env.txt" 2>&1
  t0=$(date +%s)
  if ! make build > "$OUT/build.log" 2>&1; then
    echo "BUILD FAILED"; tail -60 "$OUT/build.log"; exit 1
  fi
  elapsed build 0 "$t0"
  .venv/bin/python -c "import json, phasor; print(json.dumps(phasor.build_info, indent=1))" | tee "$OUT/build_info.json"
fi

if stage test; then
  t0=$(date +%s)
  .venv/bin/python -m pytest -q -ra -m "not slow" tests/test_build.py > "$OUT/tests_build.log" 2>&1
  r1=$?
  .venv/bin/python -m pytest -q -ra -m cuda tests --junitxml "$OUT/tests_cuda.xml" > "$OUT/tests_cuda.log" 2>&1
  r2=$?
  elapsed "cuda tests" $(( r1 || r2 )) "$t0"; tail -5 "$OUT/tests_build.log"; tail -40 "$OUT/tests_cuda.log"
  rc=$(( rc || r1 || r2 ))
fi

if stage cputest; then
  t0=$(date +%s)
  .venv/bin/python -m pytest -q -ra -m "not cuda" tests > "$OUT/tests_cpu.log" 2>&1
  r=$?
  elapsed "cpu tests" $r "$t0"; tail -15 "$OUT/tests_cpu.log"
  rc=$(( rc || r ))
fi

if stage bench; then
  t0=$(date +%s)
  .venv/bin/python -m phasor bench --device cuda --json "$OUT/bench_cuda.json" > "$OUT/bench_cuda.log" 2>&1
  r=$?
  elapsed "cuda bench" $r "$t0"; cat "$OUT/bench_cuda.log"
  rc=$(( rc || r ))
fi
exit $rc
