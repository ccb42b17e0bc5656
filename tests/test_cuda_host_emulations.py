"""Host-side emulations of the CUDA kernels' index math, run on machines without a GPU.

The tensor-core and cluster kernels' fragment layouts, lane addresses, swizzles and tile ownership cannot be run
on the CPU machine, so each is mirrored by a host program (kept next to its system's tests) that
replays the kernel's addressing and compares with a plain computation. Running them here means an
edit that breaks the mapping fails CI before it reaches a GPU session. Slow (nvcc or a Python
thread-level emulation); CI runs slow tests. The cv-RNN cluster kernels' emulation is an ordinary
test module (tests/complex_rnn/test_cvrnn_cuda_index_emulation.py).
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NVCC = os.environ.get("CUDACXX") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc")
                                     else shutil.which("nvcc"))
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def _run(cmd, timeout):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _compile_and_run_host_check(src: str, tmp_path) -> str:
    exe = tmp_path / Path(src).stem
    torch_inc = Path(torch.__file__).parent / "include"
    build = _run([NVCC, "-std=c++20", "-I", "csrc", "-isystem", str(torch_inc), "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
                  "-x", "cu", src, "-o", str(exe)], timeout=900)
    assert build.returncode == 0, f"{src} does not compile:\n{build.stderr[-4000:]}"
    run = _run([str(exe)], timeout=600)
    assert run.returncode == 0 and "FAIL" not in run.stdout, f"{src} failed:\n{run.stdout[-4000:]}"
    return run.stdout


@pytest.mark.slow
@needs_nvcc
def test_gta_mma_fragment_layouts_on_host(tmp_path):
    out = _compile_and_run_host_check("tests/gta/mma_layout_check.cu", tmp_path)
    assert "all checks passed" in out


@pytest.mark.slow
def test_int8_conv_mma_kernel_emulation_matches_cpu_op():
    run = _run([sys.executable, "tests/quantized_pde/emulate_int8_conv_mma.py"], timeout=1800)
    assert run.returncode == 0, run.stderr[-4000:]
    lines = run.stdout.splitlines()
    assert sum(" OK" in line for line in lines) >= 7, run.stdout[-4000:]
    assert not any("FAIL" in line or "exact: False" in line for line in lines), run.stdout[-4000:]


@pytest.mark.slow
def test_int8_conv1x1_direct_kernel_emulation_matches_cpu_op():
    run = _run([sys.executable, "tests/quantized_pde/emulate_int8_conv1x1.py"], timeout=1800)
    assert run.returncode == 0 and "ALL OK" in run.stdout, (run.stdout + run.stderr)[-4000:]


@pytest.mark.slow
def test_int8_conv3x3_direct_kernel_emulation_matches_cpu_op():
    run = _run([sys.executable, "tests/quantized_pde/emulate_int8_conv3x3.py"], timeout=1800)
    assert run.returncode == 0 and "ALL OK" in run.stdout, (run.stdout + run.stderr)[-4000:]
    broken = _run([sys.executable, "tests/quantized_pde/emulate_int8_conv3x3.py", "--break"], timeout=600)
    assert broken.returncode == 0 and "broken index caught" in broken.stdout, (broken.stdout + broken.stderr)[-4000:]
