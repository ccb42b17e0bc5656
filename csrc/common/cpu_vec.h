// 32-byte GCC vector types and unaligned load / store / broadcast helpers for CPU kernels compiled
// once per instruction set: AVX2 registers in *_avx2.cpp builds, two SSE halves in the base build.
// The helpers live in a namespace named by PHASOR_CPU_ISA, so the base and avx2 builds of the same
// inline function never share a symbol (the linker could otherwise keep the AVX2 copy for both).
#pragma once
#include <cstdint>
#include <cstring>

#ifndef PHASOR_CPU_ISA
#error "define PHASOR_CPU_ISA (the namespace of this instruction-set variant) before including"
#endif

namespace phasor::cpu_vec::PHASOR_CPU_ISA {

template <typename T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = 32 / sizeof(T);

template <typename T>
inline Vec<T> loadu(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void storeu(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}
template <typename T>
inline Vec<T> splat(T x) {
  Vec<T> v;  // lane by lane (GCC emits one broadcast); `Vec<T>{} + x` would keep a real add of +0
  for (int64_t l = 0; l < kLanes<T>; ++l) v[l] = x;
  return v;
}

}  // namespace phasor::cpu_vec::PHASOR_CPU_ISA
