"""The AddressSanitizer build of the emulator (PHASOR_CUDA_EMU_ASAN=1, libasan preloaded) must
report out-of-bounds reads of global memory (torch tensors) and of shared memory, and pass clean
kernels. Run in a subprocess: libasan has to be loaded before Python starts."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import emulated_cuda_ops

pytestmark = [pytest.mark.cuda_emu, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys, torch
sys.path.insert(0, "tests")
from helpers import emulated_cuda_ops
emu = emulated_cuda_ops("selftest")
x = torch.arange(100, dtype=torch.float32)
assert emu.emu_read_at(x, 99, False).item() == 99.0
assert emu.emu_read_at(x, 63, True).item() == 1.0
print("in bounds ok", flush=True)
emu.emu_read_at(x, int(sys.argv[1]), sys.argv[2] == "shared")
print("no report", flush=True)
"""


def asan_env():
    # libstdc++ too: with libasan alone preloaded, any C++ exception (a TORCH_CHECK) aborts.
    libs = [subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
            for name in ("libasan.so", "libstdc++.so")]
    if not all(lib and os.path.isabs(lib) and os.path.exists(lib) for lib in libs):
        pytest.skip("libasan / libstdc++ not found (gcc -print-file-name=...)")
    return {**os.environ, "PHASOR_CUDA_EMU_ASAN": "1", "LD_PRELOAD": " ".join(libs), "ASAN_OPTIONS": "detect_leaks=0"}


@pytest.mark.parametrize("offset,space", [(100, "global"), (-1, "global"), (64, "shared")])
def test_out_of_bounds_reads_are_reported(offset, space):
    emulated_cuda_ops("selftest")  # skips without the CUDA headers
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(offset), space], cwd=ROOT, env=asan_env(),
                         capture_output=True, text=True, timeout=1800)
    assert "in bounds ok" in run.stdout, run.stderr[-3000:]
    assert "no report" not in run.stdout
    assert "ERROR: AddressSanitizer" in run.stderr, run.stderr[-3000:]
