#include "common/cpu_isa.h"

#include <atomic>
#include <cstdlib>

namespace phasor {
namespace {

bool parse(const std::string& name, CpuIsa* out) {
  if (name == "base" || name == "default") { *out = CpuIsa::Base; return true; }
  if (name == "avx2") { *out = CpuIsa::Avx2; return true; }
  if (name == "avx512") { *out = CpuIsa::Avx512; return true; }
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
  // The subsets *_avx512.cpp files are compiled for (CMakeLists.txt); the OS saving zmm state is
  // part of what __builtin_cpu_supports checks.
  static const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return avx512 ? CpuIsa::Avx512 : avx2 ? CpuIsa::Avx2 : CpuIsa::Base;
#else
  return CpuIsa::Base;
#endif
}

CpuIsa active_cpu_isa() { return static_cast<CpuIsa>(current().load(std::memory_order_relaxed)); }

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::Avx512: return "avx512";
    case CpuIsa::Avx2: return "avx2";
    default: return "base";
  }
}

bool set_cpu_isa(const std::string& name) {
  CpuIsa want;
  if (!parse(name, &want) || static_cast<int>(want) > static_cast<int>(best_supported_cpu_isa())) return false;
  current().store(static_cast<int>(want));
  return true;
}

}  // namespace phasor
