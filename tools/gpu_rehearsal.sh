#!/usr/bin/env bash
# Rehearse the GPU machine's build on a machine without a GPU:  bash tools/gpu_rehearsal.sh [OUTDIR]
#
# The GPU machine runs Python 3.12 in a venv with torch 2.11.0+cu130 (PyPI's default wheel, which
# brings the CUDA 13 runtime packages) and nvcc 13.0. This script makes the same stack here (about
# 5 GB, once, in $REHEARSAL_VENV), clones HEAD, and runs `bench/gpu.sh OUTDIR build` in the clone
# with that venv's python3 first on PATH, exactly as the GPU machine would: a real CUDA build whose
# kernels are linked into phasor._C, then the import. After it, it reports every kernel's
# registers and local memory (spills) from the built binary, checks that each phasor op has a CUDA
# kernel registered, and runs the CPU test suite under that torch. Nothing runs on a GPU; what it
# catches is what would otherwise cost the first minutes of a GPU lease: CMake/toolkit discovery,
# link errors, torch-version API drift, and spills in the real build flags.
set -euo pipefail
OUT=${1:-/tmp/phasor-gpu-rehearsal}
VENV=${REHEARSAL_VENV:-/tmp/phasor-gpu-venv}
PYVER=${REHEARSAL_PYTHON:-3.12}
TORCH=${REHEARSAL_TORCH:-torch==2.11.0}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)

if [[ ! -x "$VENV/bin/python3" ]]; then
  py=$(command -v "python$PYVER" || true)
  [[ -n "$py" ]] || { echo "python$PYVER not found (pyenv: PYENV_VERSION=<3.12.x>)"; exit 2; }
  "$py" -m venv "$VENV"
  "$VENV/bin/pip" install -q "$TORCH" cmake ninja pybind11 scikit-build-core numpy pytest pytest-xdist
fi

CLONE="$OUT/clone"
rm -rf "$CLONE"; git clone -q "$ROOT" "$CLONE"
cd "$CLONE"
# 2 cores take ~260 s alone and far longer beside other jobs: no 400-s build cap here.
PATH="$VENV/bin:$PATH" GPU_BUDGET_S=${GPU_BUDGET_S:-3000} GPU_BUILD_S=${GPU_BUILD_S:-2400} bash bench/gpu.sh "$OUT" build

so=$(ls build/*/_C*.so | head -1)
cuobjdump=$(command -v cuobjdump || ls "$VENV"/lib/python*/site-packages/triton/backends/nvidia/bin/cuobjdump)
"$cuobjdump" -res-usage "$so" > "$OUT/res_usage.txt" 2>&1
kernels=$(grep -c 'Function' "$OUT/res_usage.txt")
spilling=$(grep -A1 'Function' "$OUT/res_usage.txt" | grep -oE 'LOCAL:[0-9]+' | grep -vc 'LOCAL:0$' || true)
echo "kernels in the binary: $kernels, with local memory (spills): $spilling" | tee -a "$OUT/summary.txt"

.venv/bin/python - <<'EOF' | tee -a "$OUT/summary.txt"
import torch, phasor  # noqa: F401  (loading phasor registers the ops)
names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("phasor::"))
no_cuda = [n for n in names if not torch._C._dispatch_has_kernel_for_dispatch_key(n, "CUDA")]
print(f"torch {torch.__version__}: {len(names)} phasor ops, without a CUDA kernel: {no_cuda}")
EOF
rc=0
.venv/bin/python -m pytest -q -ra -m "not slow" -p no:cacheprovider tests > "$OUT/tests_cpu.log" 2>&1 || rc=$?
echo "CPU tests under $TORCH: rc=$rc, $(tail -1 "$OUT/tests_cpu.log")" | tee -a "$OUT/summary.txt"
exit $rc
