// Run-time choice of the CPU kernel build: kernels that gain from wider vectors are compiled once
// per instruction set (files *_avx2.cpp get -mavx2 -mfma, *_avx512.cpp add AVX-512 F/BW/VL/DQ) and
// picked here, as ATen's DispatchStub does. PHASOR_CPU_ISA=base|avx2|avx512 in the environment (or
// phasor._C.set_cpu_isa) overrides the choice.
#pragma once
#include <string>

namespace phasor {

enum class CpuIsa { Base, Avx2, Avx512 };  // ordered: each one implies the ones before

CpuIsa active_cpu_isa();
CpuIsa best_supported_cpu_isa();
const char* cpu_isa_name(CpuIsa isa);
// Returns false (and changes nothing) for an unknown name or an ISA this CPU lacks.
bool set_cpu_isa(const std::string& name);

// The build of one kernel for the active instruction set (pass the three builds' entry points).
template <typename F>
F* for_active_isa(F* base, F* avx2, F* avx512) {
  switch (active_cpu_isa()) {
    case CpuIsa::Avx512: return avx512;
    case CpuIsa::Avx2: return avx2;
    default: return base;
  }
}

}  // namespace phasor

// The active build of kernel `fn`, declared in namespaces base, avx2 and avx512 where it is used.
#define PHASOR_ISA_KERNEL(fn) ::phasor::for_active_isa(&base::fn, &avx2::fn, &avx512::fn)
