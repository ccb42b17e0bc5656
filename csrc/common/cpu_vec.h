// GCC vector types and unaligned load / store / broadcast helpers for CPU kernels compiled once per
// instruction set. The width is the build's register width, 64 bytes in *_avx512.cpp builds and 32
// otherwise (one AVX2 register, or two SSE halves in the base build), unless the including kernel
// defines PHASOR_VEC_BYTES first (a kernel whose blocking suits 32-byte vectors keeps them).
// Everything here has internal linkage, so each translation unit (one ISA build of one kernel, with
// its width) keeps its own copies: the linker can never substitute one build's helpers for another's.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__AVX__)
#include <immintrin.h>
#endif

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
// Integer lane indices of the same width, for __builtin_shuffle.
template <typename T>
struct LaneIndexOf {
  using Int = std::conditional_t<sizeof(T) == 8, int64_t, int32_t>;
  typedef Int type __attribute__((vector_size(kVecBytes)));
};

// Broadcast through a shuffle of lane 0: GCC turns it into one vbroadcastss/sd (or a memory-operand
// {1toN} broadcast). Filling the lanes one by one instead can come out as narrow stack stores
// reloaded as one wide vector, a store-forwarding stall on every call (seen in the wave-RNN conv).
template <typename T>
inline Vec<T> splat(T x) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "splat: 32- or 64-bit lanes only");
  return __builtin_shuffle(Vec<T>{x}, typename LaneIndexOf<T>::type{});
}
// Make the compiler materialise v in a register here. GCC otherwise folds a load that feeds several
// FMAs into each of them as a memory operand, one load per use: in a register-blocked kernel that
// makes the load ports, not the FMA units, the limit. (No-op where a vector is not one register.)
template <typename T>
inline void keep_in_register(Vec<T>& v) {
#if defined(__AVX512F__)
  __asm__("" : "+v"(v));
#elif defined(__AVX__)
  if constexpr (kVecBytes == 32) __asm__("" : "+x"(v));
#else
  (void)v;
#endif
}

// Store that bypasses the caches (p must be aligned to the vector width), for large outputs written
// once: a plain store first reads the line (read-for-ownership) and evicts input the next pass
// still wants. Call stream_fence() before the written data is handed to another thread.
template <typename T>
inline void stream_store(T* p, Vec<T> v) {
#if defined(__AVX512F__)
  if constexpr (kVecBytes == 64 && sizeof(T) == 4) return _mm512_stream_ps(reinterpret_cast<float*>(p), (__m512)v);
  if constexpr (kVecBytes == 64 && sizeof(T) == 8) return _mm512_stream_pd(reinterpret_cast<double*>(p), (__m512d)v);
#endif
#if defined(__AVX__)
  if constexpr (kVecBytes == 32 && sizeof(T) == 4) return _mm256_stream_ps(reinterpret_cast<float*>(p), (__m256)v);
  if constexpr (kVecBytes == 32 && sizeof(T) == 8) return _mm256_stream_pd(reinterpret_cast<double*>(p), (__m256d)v);
#endif
  storeu(p, v);
}
// Streams len elements from an L1-resident staging row to dst (dst aligned, len a multiple of the
// lanes: see can_stream).
template <typename T>
inline void stream_copy(T* dst, const T* src, int64_t len) {
  for (int64_t j = 0; j < len; j += kLanes<T>) stream_store(dst + j, loadu(src + j));
}
// (never in the baseline build: without AVX stream_store is a plain store, and staging would only add a copy)
template <typename T>
inline bool can_stream(const T* dst, int64_t len) {
#if defined(__AVX__)
  return len % kLanes<T> == 0 && reinterpret_cast<uintptr_t>(dst) % kVecBytes == 0;
#else
  (void)dst;
  (void)len;
  return false;
#endif
}
inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
}
template <typename T>
inline double hsum(Vec<T> v) {
  double s = 0;
  for (int64_t l = 0; l < kLanes<T>; ++l) s += v[l];
  return s;
}

}  // namespace
}  // namespace phasor::cpu_vec
