"""Builds phasor's CUDA kernels for the CPU under cuda_emu and loads them as torch ops.

    import sys; sys.path.insert(0, "tools/cuda_emu"); import build
    ns = build.load("rotating_features")      # torch.ops.<ns>.rot_bn_fwd(...) runs the CUDA kernels on CPU tensors

Every call translates csrc/ afresh into build/cuda_emu/<system>/src (translate.py) and lets
torch.utils.cpp_extension rebuild only what changed. PHASOR_CUDA_EMU_ASAN=1 adds AddressSanitizer
(the process must then preload libasan: see tests/cuda_emu/conftest.py). PHASOR_CUDA_EMU_PROFILE=FILE
builds the profiling flavour instead (runtime/cuda_emu_profile.h; profile.py drives it).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.utils.cpp_extension as cpp_ext

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
sys.path.insert(0, str(HERE))
from translate import translate  # noqa: E402

# The sources each system's emulated library compiles: its CUDA files, its schemas, and host helpers
# they call. CPU-kernel files are not compiled (their registrations would clash).
SYSTEMS = {
    "rotating_features": ["rotating_features/rot_epilogue_cuda.cu", "rotating_features/rot_schema.cpp"],
    "wave_rnn": ["wave_rnn/wave_rnn_cuda.cu", "wave_rnn/wave_rnn_schema.cpp"],
    "complex_rnn": ["complex_rnn/complex_rnn_cuda.cu", "complex_rnn/complex_rnn_schema.cpp",
                    "complex_rnn/complex_rnn_lowrank.cpp"],
    "gta": ["gta/gta_cuda.cu", "gta/gta_cuda_mma.cu", "gta/gta_cuda_mma_bwd.cu", "gta/gta_schema.cpp"],
    "quantized_pde": ["quantized_pde/qpde_cuda.cu", "quantized_pde/qpde_int8_conv_cuda.cu",
                      "quantized_pde/qpde_schema.cpp"],
    # The emulator's own checks (tests/cuda_emu/test_cuda_emu_runtime.py); a path outside csrc/.
    "selftest": ["../tests/cuda_emu/selftest_kernels.cu"],
}


def cuda_include() -> str:
    for cand in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if cand and (Path(cand) / "include" / "cuda_runtime.h").exists():
            return str(Path(cand) / "include")
    nvcc = shutil.which("nvcc")
    if nvcc and (Path(nvcc).parents[1] / "include" / "cuda_runtime.h").exists():
        return str(Path(nvcc).parents[1] / "include")
    raise RuntimeError("cuda_emu needs the CUDA toolkit's headers (cuda_runtime.h, cuda_fp16.h)")


def available() -> bool:
    try:
        cuda_include()
        return True
    except RuntimeError:
        return False


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def load(system: str, verbose: bool = False, override_cpu: bool = False) -> str:
    """Build (if needed) and load the emulated CUDA ops of `system`; returns their op namespace.

    override_cpu=True registers them as phasor's own CPU kernels instead (namespace "phasor"): every
    caller of torch.ops.phasor.* on CPU tensors in this process (wrappers, autograd, models, bench
    cases) then runs the CUDA kernels. There is no way back, so do it in a process of its own."""
    if system not in SYSTEMS:
        raise ValueError(f"cuda_emu: system must be one of {', '.join(SYSTEMS)}, got {system!r}")
    namespace = "phasor" if override_cpu else f"phasor_emu_{system}"
    key = (system, override_cpu)
    if getattr(load, "_loaded", {}).get(key):
        return namespace
    asan = os.environ.get("PHASOR_CUDA_EMU_ASAN") == "1"
    profile = bool(os.environ.get("PHASOR_CUDA_EMU_PROFILE"))
    if asan and profile:
        raise ValueError("cuda_emu: PHASOR_CUDA_EMU_ASAN and PHASOR_CUDA_EMU_PROFILE cannot be combined")
    flavour = ("_override" if override_cpu else "") + ("_asan" if asan else "") + ("_profile" if profile else "")
    out = ROOT / "build" / "cuda_emu" / (system + flavour)
    src = out / "src"
    # Translate every header (kernels include shared device headers) and the system's sources.
    for path in CSRC.rglob("*"):
        if path.suffix in (".h", ".cuh", ".cu", ".cpp") and path.is_file():
            rel = path.relative_to(CSRC)
            _write_if_changed(src / rel, translate(path.read_text(), str(rel), namespace))
    sources = []
    for rel in SYSTEMS[system]:
        if rel.startswith("../"):  # outside csrc: translate it on its own
            text, rel = translate((CSRC / rel).read_text(), rel, namespace), Path(rel).name
        else:
            text = (src / rel).read_text()
        cpp = src / (rel[:-3] + "_emu.cpp" if rel.endswith(".cu") else rel)
        _write_if_changed(cpp, text)
        sources.append(str(cpp))
    if not override_cpu:
        main = src / f"{system}_emu_library.cpp"
        _write_if_changed(main, f"#include <torch/library.h>\nTORCH_LIBRARY({namespace}, m) {{}}\n")
        sources.append(str(main))
    flags = ["-O1", "-std=c++20", "-fno-strict-aliasing", "-pthread", "-Wno-attributes", "-Wno-unused-variable",
             "-Wno-unused-function", "-DPHASOR_CUDA_EMU=1"]
    ldflags = ["-pthread"]
    if asan:
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
        ldflags += ["-fsanitize=address"]
    if profile:
        # Every load and store becomes a call the profile records (kernel-address mode needs no
        # runtime library). -O0 keeps each source-level access as written: no merged or widened
        # accesses, and a read-modify-write stays a load and a store.
        flags = [f for f in flags if f != "-O1"] + [
            "-O0", "-g", "-fno-omit-frame-pointer", "-DCUDA_EMU_PROFILE=1", "-fsanitize=kernel-address",
            "--param", "asan-instrumentation-with-call-threshold=0", "--param", "asan-stack=0",
            "--param", "asan-globals=0"]
    build_dir = out / "obj"
    # ninja compares times only: an object compiled while the runtime changed would look current.
    # A changed runtime (or translator) gets a clean object directory instead.
    stamp = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((HERE / "runtime").rglob("*.h")))
                           + (HERE / "translate.py").read_bytes()).hexdigest()
    stamp_file = out / "runtime.sha256"
    if not stamp_file.exists() or stamp_file.read_text() != stamp:
        shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_ext.load(name=f"phasor_emu_{system}" + flavour, sources=sources, extra_cflags=flags, extra_ldflags=ldflags,
                 extra_include_paths=[str(HERE / "runtime"), str(src), cuda_include()],
                 build_directory=str(build_dir), is_python_module=False, with_cuda=False, verbose=verbose)
    stamp_file.write_text(stamp)
    load._loaded = {**getattr(load, "_loaded", {}), key: True}
    return namespace
