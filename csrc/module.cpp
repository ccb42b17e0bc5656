// phasor._C: a pybind11 module whose Python surface is build information only.
// Loading the shared object runs the TORCH_LIBRARY registrations (static initialisers),
// which is what makes torch.ops.phasor.* exist. Tensors never pass through pybind11.
#include <pybind11/pybind11.h>
#include <ATen/Config.h>
#include <ATen/Parallel.h>

#include "common/cpu_isa.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "phasor native library: fused CPU/CUDA kernels registered as torch.ops.phasor.*";
  m.def("build_info", []() {
    py::dict info;
    info["torch_version"] = PHASOR_TORCH_VERSION;
    info["with_cuda"] = static_cast<bool>(PHASOR_WITH_CUDA);
    info["cuda_archs"] = PHASOR_CUDA_ARCHS;
    info["nvcc_version"] = PHASOR_NVCC_VERSION;
    info["cxx_compiler"] = PHASOR_CXX_COMPILER;
    info["cxx_flags"] = PHASOR_CXX_FLAGS;
    info["build_type"] = PHASOR_BUILD_TYPE;
#ifdef _OPENMP
    info["openmp"] = true;  // kernels compiled with OpenMP, so at::parallel_for really runs in parallel
#else
    info["openmp"] = false;
#endif
    info["cpu_isas"] = PHASOR_CPU_ISAS;  // instruction-set builds of the CPU kernels
    return info;
  }, "Dict describing how this binary was built: torch version, CUDA kernels and architectures, compiler, flags.");
  m.def("cpu_isa", []() { return std::string(phasor::cpu_isa_name(phasor::active_cpu_isa())); },
        "Instruction set of the CPU kernels in use ('base', 'avx2' or 'avx512').");
  m.def("set_cpu_isa", &phasor::set_cpu_isa, py::arg("name"),
        "Use the 'base', 'avx2' or 'avx512' CPU kernels; returns False if unknown or unsupported by this CPU.");
}
