#!/usr/bin/env bash
# Compile-check one CUDA source for sm_80 and sm_90a (no link), with ptxas's resource report
# (registers, shared memory, stack frame, spills) per kernel. Same flags as `make cuda-check`, but one
# file and no CMake, so several people can check different files at once.
#
# usage: bash tools/nvcc_one.sh csrc/gta/gta_cuda.cu [extra nvcc flags...]
# env:   PY (default .venv/bin/python), CUDACXX (default /usr/local/cuda/bin/nvcc, else nvcc on PATH)
set -euo pipefail
SRC=${1:?usage: bash tools/nvcc_one.sh FILE.cu [nvcc flags]}
shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY=${PY:-$ROOT/.venv/bin/python}
NVCC=${CUDACXX:-$( [[ -x /usr/local/cuda/bin/nvcc ]] && echo /usr/local/cuda/bin/nvcc || command -v nvcc )}
TORCH_INC=$("$PY" -c "import torch, os; print(os.path.join(os.path.dirname(torch.__file__), 'include'))")
OBJ=$(mktemp --suffix=.o)
trap 'rm -f "$OBJ"' EXIT
"$NVCC" -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -I"$ROOT/csrc" -isystem "$TORCH_INC" \
  -isystem "$TORCH_INC/torch/csrc/api/include" -O3 -DNDEBUG -std=c++20 \
  --generate-code=arch=compute_80,code=sm_80 --generate-code=arch=compute_90a,code=sm_90a \
  --expt-relaxed-constexpr -Xptxas -v "$@" -x cu -c "$SRC" -o "$OBJ" > "$OBJ.log" 2>&1 && rc=0 || rc=$?
# ptxas prints a few lines per kernel and arch; drop the per-function headers, keep what a reader acts on.
grep -v -E '^ptxas info\s*: Function properties for' "$OBJ.log" || true
rm -f "$OBJ.log"
if [[ $rc -ne 0 ]]; then echo "nvcc_one: FAILED ($SRC)" >&2; exit $rc; fi
echo "nvcc_one: compiled $SRC (sm_80, sm_90a)"
