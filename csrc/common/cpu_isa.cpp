#include "common/cpu_isa.h"

#include <atomic>
#include <cstdlib>

namespace phasor {
namespace {

bool parse(const std::string& name, CpuIsa* out) {
  if (name == "base" || name == "default") { *out = CpuIsa::Base; return true; }
  if (name == "avx2") { *out = CpuIsa::Avx2; return true; }
  return false;
}

CpuIsa initial_isa() {
  CpuIsa best = best_supported_cpu_isa(), want;
  const char* env = std::getenv("PHASOR_CPU_ISA");
  if (env && parse(env, &want) && static_cast<int>(want) <= static_cast<int>(best)) return want;
  return best;
}

std::atomic<int>& current() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

}  // namespace

CpuIsa best_supported_cpu_isa() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return avx2 ? CpuIsa::Avx2 : CpuIsa::Base;
#else
  return CpuIsa::Base;
#endif
}

CpuIsa active_cpu_isa() { return static_cast<CpuIsa>(current().load(std::memory_order_relaxed)); }

const char* cpu_isa_name(CpuIsa isa) { return isa == CpuIsa::Avx2 ? "avx2" : "base"; }

bool set_cpu_isa(const std::string& name) {
  CpuIsa want;
  if (!parse(name, &want) || static_cast<int>(want) > static_cast<int>(best_supported_cpu_isa())) return false;
  current().store(static_cast<int>(want));
  return true;
}

}  // namespace phasor
