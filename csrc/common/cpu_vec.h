// GCC vector types and unaligned load / store / broadcast helpers for CPU kernels compiled once per
// instruction set. The width is the build's register width, 64 bytes in *_avx512.cpp builds and 32
// otherwise (one AVX2 register, or two SSE halves in the base build), unless the including kernel
// defines PHASOR_VEC_BYTES first (a kernel whose blocking suits 32-byte vectors keeps them).
// Everything here has internal linkage, so each translation unit (one ISA build of one kernel, with
// its width) keeps its own copies: the linker can never substitute one build's helpers for another's.
#pragma once
#include <cstdint>
#include <cstring>

namespace phasor::cpu_vec {
namespace {

#if defined(PHASOR_VEC_BYTES)
constexpr int kVecBytes = PHASOR_VEC_BYTES;
#elif defined(__AVX512F__)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif

// (an alias template cannot carry the attribute for a dependent type, hence the struct)
template <typename T>
struct VecOf {
  typedef T type __attribute__((vector_size(kVecBytes)));
};
template <typename T>
using Vec = typename VecOf<T>::type;
template <typename T>
constexpr int64_t kLanes = kVecBytes / sizeof(T);

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
template <typename T>
inline double hsum(Vec<T> v) {
  double s = 0;
  for (int64_t l = 0; l < kLanes<T>; ++l) s += v[l];
  return s;
}

}  // namespace
}  // namespace phasor::cpu_vec
