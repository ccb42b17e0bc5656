// Run-time choice of the CPU kernel build: kernels that gain from wider vectors are compiled once
// per instruction set (files *_avx2.cpp get -mavx2 -mfma) and picked here, as ATen's DispatchStub
// does. PHASOR_CPU_ISA=base|avx2 in the environment (or phasor._C.set_cpu_isa) overrides it.
#pragma once
#include <string>

namespace phasor {

enum class CpuIsa { Base, Avx2 };

CpuIsa active_cpu_isa();
CpuIsa best_supported_cpu_isa();
const char* cpu_isa_name(CpuIsa isa);
// Returns false (and changes nothing) for an unknown name or an ISA this CPU lacks.
bool set_cpu_isa(const std::string& name);

}  // namespace phasor
