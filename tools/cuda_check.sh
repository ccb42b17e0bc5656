#!/usr/bin/env bash
# Compile-only check of every CUDA source (csrc/*/*.cu) against the installed torch's headers,
# for sm_80 and sm_90a, without linking (works with a CPU-only torch).
#
# usage: bash tools/cuda_check.sh PYTHON
#   PYTHON   the interpreter whose torch/pybind11 to build against (e.g. .venv/bin/python)
# env:     CUDACXX    nvcc to use (default: /usr/local/cuda/bin/nvcc, else `which nvcc`)
#          CUDA_CHECK_CLEAN=1   wipe build/cuda-check first (forces every file to recompile)
# Exits non-zero on any configure or compile error.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: bash tools/cuda_check.sh PYTHON" >&2
  exit 2
fi
PY="$1"
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "cuda_check: python interpreter '$PY' not found" >&2
  exit 2
fi
PY="$(command -v "$PY")"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/build/cuda-check"
cd "$ROOT"

# The venv's own tools (cmake, ninja) first.
export PATH="$(dirname "$PY"):$PATH"

# cmake: the pip `cmake` module if the interpreter has it (the system cmake may be too old).
CMAKE="$("$PY" -c "import cmake,os;print(os.path.join(cmake.CMAKE_BIN_DIR,'cmake'))" 2>/dev/null || true)"
if [[ -z "$CMAKE" || ! -x "$CMAKE" ]]; then
  CMAKE="$(command -v cmake || true)"
fi
if [[ -z "$CMAKE" ]]; then
  echo "cuda_check: no cmake found (pip install cmake)" >&2
  exit 1
fi

# nvcc: an explicit CUDACXX wins, then the toolkit's own nvcc, then whatever is on PATH.
if [[ -z "${CUDACXX:-}" ]]; then
  if [[ -x /usr/local/cuda/bin/nvcc ]]; then
    CUDACXX=/usr/local/cuda/bin/nvcc
  else
    CUDACXX="$(command -v nvcc || true)"
  fi
fi
if [[ -z "$CUDACXX" || ! -x "$CUDACXX" ]]; then
  echo "cuda_check: no nvcc found (set CUDACXX)" >&2
  exit 1
fi
export CUDACXX

PYBIND11_DIR="$("$PY" -m pybind11 --cmakedir)"

shopt -s nullglob
SOURCES=(csrc/*/*.cu)
shopt -u nullglob
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "cuda_check: no csrc/*/*.cu files, nothing to check"
  exit 0
fi

echo "cuda_check: python  $PY"
echo "cuda_check: cmake   $CMAKE ($("$CMAKE" --version | head -n1))"
echo "cuda_check: nvcc    $CUDACXX ($("$CUDACXX" --version | grep -o 'release [0-9.]*' || echo '?'))"
echo "cuda_check: build   $BUILD"

if [[ "${CUDA_CHECK_CLEAN:-0}" == "1" ]]; then
  rm -rf "$BUILD"
fi

start=$(date +%s)
"$CMAKE" -S "$ROOT" -B "$BUILD" -G Ninja \
  -DPHASOR_CUDA=COMPILE_ONLY \
  -DPython_EXECUTABLE="$PY" \
  -Dpybind11_DIR="$PYBIND11_DIR" \
  -DCMAKE_BUILD_TYPE=Release
configured=$(date +%s)

# A CUDA torch makes this a real CUDA build, which has no phasor_cuda_check target.
if ! grep -q '^build phasor_cuda_check:' "$BUILD/build.ninja"; then
  echo "cuda_check: the configuration has no phasor_cuda_check target (a CUDA-enabled torch?" \
       "then build the package itself, which compiles the .cu files for real)" >&2
  exit 1
fi

"$CMAKE" --build "$BUILD" --target phasor_cuda_check
end=$(date +%s)

echo
echo "cuda_check: OK, compiled (sm_80, sm_90a; not linked):"
for f in "${SOURCES[@]}"; do echo "  $f"; done
# Per-file compile times from this run (ninja's log: start, end in ms, mtime, output).
if [[ -f "$BUILD/.ninja_log" ]]; then
  awk 'NR > 1 && $4 ~ /phasor_cuda_check.*\.cu\.o$/ { t[$4] = ($2 - $1) / 1000.0 }
       END { for (o in t) printf "  %6.1f s  %s (last compile)\n", t[o], o }' "$BUILD/.ninja_log"
fi
echo "cuda_check: configure $((configured - start)) s, build $((end - configured)) s, total $((end - start)) s"
