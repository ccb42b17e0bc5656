// Small device helpers shared by phasor's CUDA kernels: warp and block reductions over any
// trivially copyable value with any associative combine, and exact (count, mean, M2) moments.
//
// Determinism: every reduction combines values in an order fixed by the block size alone
// (a shuffle tree inside each warp, then warp 0..W-1 in index order), so a given launch
// configuration always produces bit-identical results. No atomics.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace phasor::cuda {

constexpr int kWarpSize = 32;
constexpr int kMaxWarps = 32;  // 1024 threads

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// A fixed-size array usable as one reduction value (e.g. several sums reduced together).
template <typename T, int N>
struct Array {
  T v[N];
  __host__ __device__ T& operator[](int i) { return v[i]; }
  __host__ __device__ const T& operator[](int i) const { return v[i]; }
};

// Combine ops. Each is an associative function of two values; identity is never needed.
struct Sum {
  template <typename T>
  __device__ __forceinline__ T operator()(const T& a, const T& b) const {
    return a + b;
  }
  template <typename T, int N>
  __device__ __forceinline__ Array<T, N> operator()(const Array<T, N>& a, const Array<T, N>& b) const {
    Array<T, N> r;
#pragma unroll
    for (int i = 0; i < N; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
};

// Count, mean and sum of squared deviations of a set of samples (Welford / Chan et al.).
// Merging is exact in real arithmetic for any split of the data, so the result does not depend
// on how the samples were distributed over threads beyond rounding.
struct Moments {
  double count;
  double mean;
  double m2;
};

__device__ __forceinline__ Moments moments_empty() { return Moments{0.0, 0.0, 0.0}; }

// Add one sample (Welford's update).
__device__ __forceinline__ void moments_push(Moments& w, double x) {
  w.count += 1.0;
  const double d = x - w.mean;
  w.mean += d / w.count;
  w.m2 += d * (x - w.mean);
}

// Chan et al.'s pairwise merge; empty sides are passed through unchanged.
struct MomentsMerge {
  __device__ __forceinline__ Moments operator()(const Moments& a, const Moments& b) const {
    if (b.count == 0.0) return a;
    if (a.count == 0.0) return b;
    const double c = a.count + b.count;
    const double d = b.mean - a.mean;
    Moments r;
    r.count = c;
    r.mean = a.mean + d * (b.count / c);
    r.m2 = a.m2 + b.m2 + d * d * (a.count * b.count / c);
    return r;
  }
};

// __shfl_down_sync for any trivially copyable value, one 32-bit word at a time.
template <typename T>
__device__ __forceinline__ T shfl_down(const T& v, unsigned delta) {
  static_assert(std::is_trivially_copyable_v<T>, "shfl_down needs a trivially copyable type");
  static_assert(sizeof(T) % sizeof(int) == 0, "shfl_down needs a size that is a multiple of 4 bytes");
  constexpr int kWords = sizeof(T) / sizeof(int);
  int w[kWords];
  memcpy(w, &v, sizeof(T));
#pragma unroll
  for (int i = 0; i < kWords; ++i) w[i] = __shfl_down_sync(0xffffffffu, w[i], delta);
  T r;
  memcpy(&r, w, sizeof(T));
  return r;
}

// Reduce over the 32 lanes of a warp; the result is valid in lane 0 only.
// All 32 lanes must call it (full mask).
template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
#pragma unroll
  for (unsigned d = kWarpSize / 2; d > 0; d >>= 1) v = op(v, shfl_down(v, d));
  return v;
}

// Reduce over the whole block; the result is returned to every thread.
// Requirements: every thread of the block calls it (it contains __syncthreads), the same
// number of times, and blockDim.x is a multiple of 32 with blockDim.y == blockDim.z == 1.
// The shared buffer is reused by later calls with the same T; the trailing barrier makes
// back-to-back calls safe.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op) {
  static_assert(alignof(T) <= 16, "block_reduce: over-aligned type");
  __shared__ __align__(16) unsigned char raw[kMaxWarps * sizeof(T)];
  T* smem = reinterpret_cast<T*>(raw);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int nwarps = blockDim.x / kWarpSize;
  v = warp_reduce(v, op);
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T r = smem[0];
    for (int w = 1; w < nwarps; ++w) r = op(r, smem[w]);
    smem[0] = r;
  }
  __syncthreads();
  const T r = smem[0];
  __syncthreads();
  return r;
}

}  // namespace phasor::cuda
