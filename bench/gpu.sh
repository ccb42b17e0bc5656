#!/usr/bin/env bash
# One command for a whole check on a lent GPU machine:  bash bench/gpu.sh OUTDIR
# Builds phasor with CUDA kernels, runs the whole test suite (CUDA tests included) and the GPU
# benchmarks, and writes logs, build info and the benchmark JSON to OUTDIR. The machine has torch,
# cmake, ninja, pybind11 and scikit-build-core preinstalled and no package registry.
set -uo pipefail
OUT=${1:?usage: bash bench/gpu.sh OUTDIR}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
export PHASOR_CUDA=${PHASOR_CUDA:-ON}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-8}
{ nvidia-smi; nvcc --version; python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; } > "$OUT/env.txt" 2>&1

t0=$(date +%s)
if ! make build > "$OUT/build.log" 2>&1; then
  echo "BUILD FAILED"; tail -60 "$OUT/build.log"; exit 1
fi
echo "build: $(( $(date +%s) - t0 ))s"
.venv/bin/python -c "import json, phasor; print(json.dumps(phasor.build_info, indent=1))" | tee "$OUT/build_info.json"

t0=$(date +%s)
.venv/bin/python -m pytest -q -ra tests --junitxml "$OUT/tests.xml" > "$OUT/tests.log" 2>&1
test_rc=$?
echo "tests: rc=$test_rc, $(( $(date +%s) - t0 ))s"; tail -15 "$OUT/tests.log"

t0=$(date +%s)
.venv/bin/python -m phasor bench --device cuda --json "$OUT/bench_cuda.json" > "$OUT/bench_cuda.log" 2>&1
bench_rc=$?
echo "cuda bench: rc=$bench_rc, $(( $(date +%s) - t0 ))s"; cat "$OUT/bench_cuda.log"
exit $(( test_rc || bench_rc ))
