// CUDA kernels of GTA attention: forward (online softmax, O(N) memory) and recomputation backward,
// with the same math, outputs and semantics as gta_cpu_kernels.h (symbols in gta.h).
//
// Forward: a block takes kWarps query rows of one (batch, head), one warp per row. The Q row is
// transformed in the load prologue (P^T, scaled, SO(2) angles -> sincosf in the kernel) into shared
// memory; key tiles of 32 are loaded with P^-1 applied on load (K~, V~ never exist in global memory);
// lane j scores key j of the tile, the warp keeps the running max / sum, each lane accumulates the
// output channels lane + 32 i; the epilogue normalises, applies P and writes O and the lse.
// Backward (FlashAttention-2 recomputation from the lse): a prologue writes q~, do~ = P^T dO and
// D = dO . O per row; a key-side kernel (warp per key, query tiles in shared memory) accumulates dK~,
// dV~; a query-side kernel (warp per query, key tiles in shared memory) dQ~ and o~; a reduction per
// (batch, view) forms the SE(3) block gradients in a fixed order, and an elementwise kernel applies
// the transposed transforms. No atomics: results are deterministic.
//
// Arithmetic in float32 (storage float32, float16 or bfloat16; geometry float32). These are SIMT
// kernels (FFMA, no tensor-core MMA). float16/bfloat16 forwards with head dim 32/64/96/128 go to the
// tensor-core kernel of gta_cuda_mma.cu instead (same outputs and contract; PHASOR_GTA_CUDA_KERNEL below),
// and their backwards replace the prologue, key-side and query-side kernels by the tensor-core ones of
// gta_cuda_mma_bwd.cu, which write the same float32 dq~, dk~, dv~, o~ for the SE(3) reduction and epilogue.
// The per-token geometry (apply_channel) is shared with it in gta_cuda_geometry.cuh.
#include "gta/gta.h"
#include "gta/gta_cuda_geometry.cuh"
#include "gta/gta_cuda_mma.h"

#include "common/cuda_host.h"
#include "common/cuda_utils.cuh"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string_view>

namespace phasor::gta {
namespace {

using phasor::cuda::kWarpSize;

constexpr int kWarps = 8;              // query (or key) rows per block, one warp each
constexpr int kTile = 32;              // keys (or queries) per shared-memory tile: one per lane
constexpr int kMaxD = 128;             // head dims the CUDA kernels take
constexpr int kPerLane = kMaxD / 32;   // output channels per lane

using dev::apply_channel;
using dev::GeoPtrs;
using dev::k_op;
using dev::q_op;
using dev::Shape;
using dev::TokenOp;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(c10::Half x) { return static_cast<float>(x); }
__device__ __forceinline__ float to_f(c10::BFloat16 x) { return static_cast<float>(x); }

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// K~ and V~ rows j0 .. j0 + kTile of (b, h) into shared memory (zeros past Nk), P^-1 applied on load.
template <typename T>
__device__ void load_kv_tile(const Shape& S, const GeoPtrs& g, const T* kb, const T* vb, int b, int j0, bool vt,
                             float* sK, float* sV, int dp) {
  for (int idx = threadIdx.x; idx < kTile * S.d; idx += blockDim.x) {
    const int jj = idx / S.d, c = idx % S.d, j = j0 + jj;
    float kv = 0.f, vv = 0.f;
    if (j < S.Nk) {
      const T* kr = kb + int64_t(j) * S.d;
      const T* vr = vb + int64_t(j) * S.d;
      const TokenOp op = k_op(S, g, b, j, false, 1.f);
      kv = apply_channel(S, g.freqs, op, [&](int cc) { return to_f(kr[cc]); }, c);
      vv = vt ? apply_channel(S, g.freqs, op, [&](int cc) { return to_f(vr[cc]); }, c) : to_f(vr[c]);
    }
    sK[jj * dp + c] = kv;
    sV[jj * dp + c] = vv;
  }
}

template <typename T>
__global__ void __launch_bounds__(kWarps * kWarpSize) gta_fwd_kernel(Shape S, GeoPtrs g, const T* __restrict__ q,
                                                                    const T* __restrict__ k, const T* __restrict__ v,
                                                                    const bool* __restrict__ mask, float scale,
                                                                    bool vt, T* __restrict__ out,
                                                                    float* __restrict__ lse) {
  extern __shared__ float smem[];
  const int dp = S.d + 1;  // padded rows: lane j reading row j is bank-conflict free
  float* sQ = smem;                  // [kWarps][dp]
  float* sK = sQ + kWarps * dp;      // [kTile][dp]
  float* sV = sK + kTile * dp;       // [kTile][dp]
  const int w = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int bh = blockIdx.y, b = bh / S.H, i = blockIdx.x * kWarps + w;
  const bool valid = i < S.Nq;
  const int64_t row = int64_t(bh) * S.Nq + i;
  float* qrow = sQ + w * dp;
  if (valid) {
    const T* qr = q + row * S.d;
    const TokenOp op = q_op(S, g, b, i, true, 1.f);
    for (int c = lane; c < S.d; c += kWarpSize)
      qrow[c] = scale * apply_channel(S, g.freqs, op, [&](int cc) { return to_f(qr[cc]); }, c);
  }
  float m = -INFINITY, l = 0.f, acc[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) acc[t] = 0.f;
  const T* kb = k + int64_t(bh) * S.Nk * S.d;
  const T* vb = v + int64_t(bh) * S.Nk * S.d;
  const bool* mb = mask ? mask + int64_t(b) * S.Nk : nullptr;
  for (int j0 = 0; j0 < S.Nk; j0 += kTile) {
    __syncthreads();  // the previous tile is consumed
    load_kv_tile(S, g, kb, vb, b, j0, vt, sK, sV, dp);
    __syncthreads();
    if (!valid) continue;
    const int j = j0 + lane;
    float s = -INFINITY;
    if (j < S.Nk && !(mb && !mb[j])) {
      float dot = 0.f;
      for (int c = 0; c < S.d; ++c) dot += qrow[c] * sK[lane * dp + c];
      s = dot;
    }
    const float mx = fmaxf(m, warp_max(s));
    if (mx == -INFINITY) continue;  // warp-uniform: every key so far masked
    const float alpha = __expf(m - mx);
    const float p = __expf(s - mx);
    l = l * alpha + warp_sum(p);
#pragma unroll
    for (int t = 0; t < kPerLane; ++t) acc[t] *= alpha;
    for (int jj = 0; jj < kTile; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const int c = lane + t * kWarpSize;
        if (c < S.d) acc[t] += pj * sV[jj * dp + c];
      }
    }
    m = mx;
  }
  if (!valid) return;
  __syncwarp();
  T* orow = out + row * S.d;
  if (l == 0.f) {
    for (int c = lane; c < S.d; c += kWarpSize) orow[c] = T(0.f);
    if (lane == 0) lse[row] = -INFINITY;
    return;
  }
  const float inv = 1.f / l;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int c = lane + t * kWarpSize;
    if (c < S.d) qrow[c] = acc[t] * inv;  // o~ row (q~ no longer needed)
  }
  __syncwarp();
  const TokenOp op = q_op(S, g, b, i, false, -1.f);
  for (int c = lane; c < S.d; c += kWarpSize)
    orow[c] = T(vt ? apply_channel(S, g.freqs, op, [&](int cc) { return qrow[cc]; }, c) : qrow[c]);
  if (lane == 0) lse[row] = m + logf(l);
}

// ---------------------------------------------------------------------------- backward
// q~ (scaled), do~ = P^T dO (or dO) and D = dO . O per query row; one warp per row.
template <typename T>
__global__ void gta_bwd_prologue_kernel(Shape S, GeoPtrs g, const T* __restrict__ q, const T* __restrict__ dO,
                                        const T* __restrict__ O, float scale, bool vt, float* __restrict__ qt,
                                        float* __restrict__ dot_t, float* __restrict__ Dv) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / kWarpSize;
  if (row >= int64_t(S.B) * S.H * S.Nq) return;
  const int b = int(row / (int64_t(S.H) * S.Nq)), i = int(row % S.Nq);
  const T* qr = q + row * S.d;
  const T* gr = dO + row * S.d;
  const T* orow = O + row * S.d;
  const TokenOp op = q_op(S, g, b, i, true, 1.f);
  float part = 0.f;
  for (int c = lane; c < S.d; c += kWarpSize) {
    qt[row * S.d + c] = scale * apply_channel(S, g.freqs, op, [&](int cc) { return to_f(qr[cc]); }, c);
    dot_t[row * S.d + c] = vt ? apply_channel(S, g.freqs, op, [&](int cc) { return to_f(gr[cc]); }, c) : to_f(gr[c]);
    part += to_f(gr[c]) * to_f(orow[c]);
  }
  part = warp_sum(part);
  if (lane == 0) Dv[row] = part;
}

// dK~, dV~: one warp per key, query tiles (q~, do~, lse, D) in shared memory, lane i = query i of the tile.
template <typename T>
__global__ void __launch_bounds__(kWarps * kWarpSize) gta_bwd_kv_kernel(
    Shape S, GeoPtrs g, const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ qt,
    const float* __restrict__ dot_t, const float* __restrict__ Dv, const float* __restrict__ lse,
    const bool* __restrict__ mask, bool vt, float* __restrict__ dkt, float* __restrict__ dvt) {
  extern __shared__ float smem[];
  const int dp = S.d + 1;
  float* sK = smem;                // [kWarps][dp]: this warp's k~ and v~
  float* sV = sK + kWarps * dp;
  float* sQ = sV + kWarps * dp;    // [kTile][dp]
  float* sO = sQ + kTile * dp;     // [kTile][dp]
  float* sL = sO + kTile * dp;     // [kTile] lse
  float* sD = sL + kTile;          // [kTile] D
  const int w = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int bh = blockIdx.y, b = bh / S.H, j = blockIdx.x * kWarps + w;
  const bool valid = j < S.Nk && !(mask && !mask[int64_t(b) * S.Nk + j]);
  const int64_t col = int64_t(bh) * S.Nk + j;
  if (j < S.Nk) {
    const TokenOp op = k_op(S, g, b, j, false, 1.f);
    const T* kr = k + col * S.d;
    const T* vr = v + col * S.d;
    for (int c = lane; c < S.d; c += kWarpSize) {
      sK[w * dp + c] = apply_channel(S, g.freqs, op, [&](int cc) { return to_f(kr[cc]); }, c);
      sV[w * dp + c] = vt ? apply_channel(S, g.freqs, op, [&](int cc) { return to_f(vr[cc]); }, c) : to_f(vr[c]);
    }
  }
  float dk[kPerLane], dv[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) dk[t] = dv[t] = 0.f;
  for (int i0 = 0; i0 < S.Nq; i0 += kTile) {
    __syncthreads();
    for (int idx = threadIdx.x; idx < kTile * S.d; idx += blockDim.x) {
      const int ii = idx / S.d, c = idx % S.d, i = i0 + ii;
      const int64_t row = int64_t(bh) * S.Nq + i;
      sQ[ii * dp + c] = i < S.Nq ? qt[row * S.d + c] : 0.f;
      sO[ii * dp + c] = i < S.Nq ? dot_t[row * S.d + c] : 0.f;
    }
    for (int ii = threadIdx.x; ii < kTile; ii += blockDim.x) {
      const int i = i0 + ii;
      sL[ii] = i < S.Nq ? lse[int64_t(bh) * S.Nq + i] : -INFINITY;
      sD[ii] = i < S.Nq ? Dv[int64_t(bh) * S.Nq + i] : 0.f;
    }
    __syncthreads();
    if (!valid) continue;
    float s = 0.f, dpv = 0.f;
    for (int c = 0; c < S.d; ++c) {
      s += sQ[lane * dp + c] * sK[w * dp + c];
      dpv += sO[lane * dp + c] * sV[w * dp + c];
    }
    const float p = sL[lane] == -INFINITY ? 0.f : __expf(s - sL[lane]);
    const float ds = p * (dpv - sD[lane]);
    for (int ii = 0; ii < kTile; ++ii) {
      const float pi = __shfl_sync(0xffffffffu, p, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const int c = lane + t * kWarpSize;
        if (c < S.d) {
          dv[t] += pi * sO[ii * dp + c];
          dk[t] += dsi * sQ[ii * dp + c];
        }
      }
    }
  }
  if (j >= S.Nk) return;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int c = lane + t * kWarpSize;
    if (c < S.d) dkt[col * S.d + c] = dk[t], dvt[col * S.d + c] = dv[t];
  }
}

// dQ~ (as dL/d(P^T q)) and o~: one warp per query, key tiles in shared memory, lane j = key j.
template <typename T>
__global__ void __launch_bounds__(kWarps * kWarpSize) gta_bwd_q_kernel(
    Shape S, GeoPtrs g, const T* __restrict__ k, const T* __restrict__ v, const float* __restrict__ qt,
    const float* __restrict__ dot_t, const float* __restrict__ Dv, const float* __restrict__ lse,
    const bool* __restrict__ mask, float scale, bool vt, float* __restrict__ dqt, float* __restrict__ ot) {
  extern __shared__ float smem[];
  const int dp = S.d + 1;
  float* sQ = smem;                  // [kWarps][dp] q~
  float* sO = sQ + kWarps * dp;      // [kWarps][dp] do~
  float* sK = sO + kWarps * dp;      // [kTile][dp]
  float* sV = sK + kTile * dp;
  const int w = threadIdx.x / kWarpSize, lane = threadIdx.x % kWarpSize;
  const int bh = blockIdx.y, b = bh / S.H, i = blockIdx.x * kWarps + w;
  const int64_t row = int64_t(bh) * S.Nq + i;
  const bool valid = i < S.Nq;
  const float L = valid ? lse[row] : -INFINITY;
  const float D = valid ? Dv[row] : 0.f;
  if (valid)
    for (int c = lane; c < S.d; c += kWarpSize) sQ[w * dp + c] = qt[row * S.d + c], sO[w * dp + c] = dot_t[row * S.d + c];
  float dq[kPerLane], o[kPerLane];
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) dq[t] = o[t] = 0.f;
  const T* kb = k + int64_t(bh) * S.Nk * S.d;
  const T* vb = v + int64_t(bh) * S.Nk * S.d;
  const bool* mb = mask ? mask + int64_t(b) * S.Nk : nullptr;
  for (int j0 = 0; j0 < S.Nk; j0 += kTile) {
    __syncthreads();
    load_kv_tile(S, g, kb, vb, b, j0, vt, sK, sV, dp);
    __syncthreads();
    if (!valid || L == -INFINITY) continue;
    const int j = j0 + lane;
    float p = 0.f, ds = 0.f;
    if (j < S.Nk && !(mb && !mb[j])) {
      float s = 0.f, dpv = 0.f;
      for (int c = 0; c < S.d; ++c) {
        s += sQ[w * dp + c] * sK[lane * dp + c];
        dpv += sO[w * dp + c] * sV[lane * dp + c];
      }
      p = __expf(s - L);
      ds = p * (dpv - D);
    }
    for (int jj = 0; jj < kTile; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj), dsj = __shfl_sync(0xffffffffu, ds, jj);
#pragma unroll
      for (int t = 0; t < kPerLane; ++t) {
        const int c = lane + t * kWarpSize;
        if (c < S.d) {
          dq[t] += dsj * sK[jj * dp + c];
          o[t] += pj * sV[jj * dp + c];
        }
      }
    }
  }
  if (!valid) return;
#pragma unroll
  for (int t = 0; t < kPerLane; ++t) {
    const int c = lane + t * kWarpSize;
    if (c < S.d) {
      dqt[row * S.d + c] = scale * dq[t];
      if (ot) ot[row * S.d + c] = o[t];
    }
  }
}

// x[0..3] as floats: one 16-byte (float) or 8-byte (16-bit) load where the caller checked alignment.
template <typename T>
__device__ __forceinline__ void load4f(const T* x, bool vec, float (&v)[4]) {
  if (vec) {
    if constexpr (sizeof(T) == 4) {
      const float4 u = *reinterpret_cast<const float4*>(x);
      v[0] = u.x, v[1] = u.y, v[2] = u.z, v[3] = u.w;
    } else {
      const uint2 u = *reinterpret_cast<const uint2*>(x);
      T e[4];
      memcpy(e, &u, sizeof(u));
#pragma unroll
      for (int i = 0; i < 4; ++i) v[i] = to_f(e[i]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = to_f(x[i]);
  }
}

// Partial sums, over heads, tokens and 4-chunks of one view, of a[r] * b[c] (+ a2[r] * b2[c]): block
// (batch, view, split) takes split `split` of the view's items and writes its 16 sums to
// partial[blockIdx.x]; the host adds the splits (in a fixed order: deterministic). A single block
// per view left all but B * V SMs idle (2 of 132 for one batch of two views).
template <typename TA, typename TB>
__global__ void gta_se3_grad_kernel(Shape S, int N, int V, int splits, const TA* __restrict__ a,
                                    const TB* __restrict__ bvec, const TA* __restrict__ a2,
                                    const TB* __restrict__ b2, float* __restrict__ partial) {
  const int bv = blockIdx.x / splits, split = blockIdx.x % splits;
  const int b = bv / V, t0 = (bv % V) * (N / V), T = N / V;
  const int chunks = S.se3 / 4;
  // 4-chunks start at multiples of 4 elements from 4-element-aligned rows: vector loads where the
  // row length, the trivial prefix and the base pointers allow
  const bool vec = S.d % 4 == 0 && S.triv % 4 == 0 &&
                   (reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(a2)) % (4 * sizeof(TA)) == 0 &&
                   (reinterpret_cast<uintptr_t>(bvec) | reinterpret_cast<uintptr_t>(b2)) % (4 * sizeof(TB)) == 0;
  phasor::cuda::Array<float, 16> acc;
#pragma unroll
  for (int e = 0; e < 16; ++e) acc[e] = 0.f;
  auto add_outer = [&](const TA* pa, const TB* pb) {  // acc += pa[0..3] pb[0..3]^T
    float x[4], y[4];
    load4f(pa, vec, x);
    load4f(pb, vec, y);
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int c = 0; c < 4; ++c) acc[r * 4 + c] += x[r] * y[c];
  };
  const int64_t items = int64_t(S.H) * T * chunks, per = (items + splits - 1) / splits;
  const int64_t end = min(items, per * (split + 1));
  for (int64_t it = per * split + threadIdx.x; it < end; it += blockDim.x) {
    const int h = int(it / (int64_t(T) * chunks)), t = int((it / chunks) % T), ch = int(it % chunks);
    const int64_t off = ((int64_t(b) * S.H + h) * N + t0 + t) * S.d + S.triv + 4 * ch;
    add_outer(a + off, bvec + off);
    if (a2) add_outer(a2 + off, b2 + off);
  }
  acc = phasor::cuda::block_reduce(acc, phasor::cuda::Sum{});
  if (threadIdx.x < 16) partial[int64_t(blockIdx.x) * 16 + threadIdx.x] = acc[threadIdx.x];
}

// Splits per view for gta_se3_grad_kernel: about 256 items (1 per thread) per block, at most 128.
inline int se3_grad_splits(const Shape& S, int64_t N, int64_t V) {
  const int64_t items = int64_t(S.H) * (N / V) * (S.se3 / 4);
  return int(std::clamp<int64_t>(phasor::cuda::ceil_div<int64_t>(items, 256), 1, 128));
}

// out = the transposed transform of x~ (query side: P x~, sign -1; key side: (P^-1)^T x~, sign -1).
template <typename T>
__global__ void gta_bwd_epilogue_kernel(Shape S, GeoPtrs g, bool query_side, int N, const float* __restrict__ xt,
                                        T* __restrict__ out) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t(S.B) * S.H * N * S.d) return;
  const int64_t row = idx / S.d;
  const int c = int(idx % S.d), b = int(row / (int64_t(S.H) * N)), i = int(row % N);
  const TokenOp op = query_side ? q_op(S, g, b, i, false, -1.f) : k_op(S, g, b, i, true, -1.f);
  const float* xr = xt + row * S.d;
  out[idx] = T(apply_channel(S, g.freqs, op, [&](int cc) { return xr[cc]; }, c));
}

template <typename T>
__global__ void copy_cast_kernel(int64_t n, const float* __restrict__ x, T* __restrict__ y) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = T(x[i]);
}

// ---------------------------------------------------------------------------- host
Shape shape_of(const Dims& D) {
  TORCH_CHECK_VALUE(D.d <= kMaxD, "phasor::gta_attention: the CUDA kernels take head dims up to ", kMaxD,
                    ", got d = ", D.d);
  TORCH_CHECK_VALUE(D.B * D.H * std::max(D.Nq, D.Nk) * D.d < (int64_t(1) << 31) * 16,
                    "phasor::gta_attention: input too large");
  return Shape{int(D.B), int(D.H), int(D.Nq), int(D.Nk), int(D.d), int(D.triv), int(D.se3), int(D.so3),
               int(D.so2), int(D.Vq), int(D.Vk), int(D.tq()), int(D.tk())};
}

struct GeoHold {
  at::Tensor q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs;
  GeoPtrs ptrs() const {
    return {q_se3.data_ptr<float>(), k_se3.data_ptr<float>(), q_so3.data_ptr<float>(), k_so3.data_ptr<float>(),
            q_pos.data_ptr<float>(), k_pos.data_ptr<float>(), freqs.data_ptr<float>()};
  }
};

void check_cuda_dtype(const char* op, const at::Tensor& q) {
  TORCH_CHECK_TYPE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16,
                   op, ": q must be float32, float16 or bfloat16 on CUDA, got ", q.scalar_type());
}

template <typename F>
void dispatch_storage(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}); return;
    case at::kHalf: f(c10::Half{}); return;
    case at::kBFloat16: f(c10::BFloat16{}); return;
    default: TORCH_CHECK_TYPE(false, "phasor::gta_attention: unsupported dtype ", st);
  }
}

// PHASOR_GTA_CUDA_KERNEL picks the kernels: unset, "" or "auto" = tensor cores where they apply
// (float16/bfloat16, head dim 32/64/96/128, sm_80+), else SIMT; "simt" = always SIMT; "mma_onload" /
// "mma_prepass" = tensor cores with the forward's K~, V~ transformed on load / by a pre-pass (where they
// apply); "mma_fwd_only" = the tensor-core forward (auto K/V mode) with the SIMT backward, for comparison;
// "mma_atomic" = auto, with the backward's one-kernel atomic-dQ variant (gta_bwd_mma's atomic_dq).
// The backward takes tensor cores under auto, mma, mma_onload, mma_prepass and mma_atomic (gta_bwd_mma_supported);
// all but mma_atomic take the deterministic two-kernel one.
// Read on every call (getenv costs far less than a launch), so tests can switch it per call.
enum class KernelChoice { kAuto, kSimt, kMmaOnLoad, kMmaPrepass, kMmaFwdOnly, kMmaAtomic };

KernelChoice kernel_choice() {
  const char* env = std::getenv("PHASOR_GTA_CUDA_KERNEL");
  const std::string_view s = env ? env : "";
  if (s.empty() || s == "auto" || s == "mma") return KernelChoice::kAuto;
  if (s == "simt") return KernelChoice::kSimt;
  if (s == "mma_onload") return KernelChoice::kMmaOnLoad;
  if (s == "mma_prepass") return KernelChoice::kMmaPrepass;
  if (s == "mma_fwd_only") return KernelChoice::kMmaFwdOnly;
  if (s == "mma_atomic") return KernelChoice::kMmaAtomic;
  TORCH_CHECK_VALUE(false, "phasor::gta_attention: PHASOR_GTA_CUDA_KERNEL must be auto, mma, simt, mma_onload, "
                    "mma_prepass, mma_fwd_only or mma_atomic, got '", s, "'");
}

std::tuple<at::Tensor, at::Tensor> gta_fwd_cuda(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                                const at::Tensor& q_se3, const at::Tensor& k_se3,
                                                const at::Tensor& q_so3, const at::Tensor& k_so3,
                                                const at::Tensor& q_pos, const at::Tensor& k_pos,
                                                const at::Tensor& freqs, c10::IntArrayRef dims,
                                                const std::optional<at::Tensor>& key_mask, double scale,
                                                bool v_transform) {
  const char* opname = "phasor::gta_attention_fwd";
  const Dims D = check_fwd(opname, q_, k_, v_, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask);
  check_cuda_dtype(opname, q_);
  const Shape S = shape_of(D);
  c10::cuda::CUDAGuard guard(q_.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const GeoHold geo{q_se3.contiguous(), k_se3.contiguous(), q_so3.contiguous(), k_so3.contiguous(),
                    q_pos.contiguous(), k_pos.contiguous(), freqs.contiguous()};
  const auto mask = key_mask ? key_mask->contiguous() : at::Tensor();
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({D.B, D.H, D.Nq}, q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};
  const KernelChoice choice = kernel_choice();
  if (choice != KernelChoice::kSimt &&
      gta_fwd_mma_supported(q.scalar_type(), D.d, D.Nq, q.get_device())) {
    const MmaKvMode mode = choice == KernelChoice::kMmaOnLoad    ? MmaKvMode::kOnLoad
                           : choice == KernelChoice::kMmaPrepass ? MmaKvMode::kPrepass
                                                                 : MmaKvMode::kAuto;
    gta_fwd_mma(S, geo.ptrs(), q, k, v, mask, scale, v_transform, mode, out, lse, stream);
    return {out, lse};
  }
  const dim3 grid(phasor::cuda::grid_for(phasor::cuda::ceil_div<int64_t>(D.Nq, kWarps), opname, "query blocks"),
                  phasor::cuda::grid_for(D.B * D.H, opname, "(batch, head) pairs"));
  const size_t smem = sizeof(float) * (kWarps + 2 * kTile) * (D.d + 1);
  dispatch_storage(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    gta_fwd_kernel<T><<<grid, kWarps * kWarpSize, smem, stream>>>(
        S, geo.ptrs(), q.data_ptr<T>(), k.data_ptr<T>(), v.data_ptr<T>(),
        mask.defined() ? mask.data_ptr<bool>() : nullptr, float(scale), v_transform, out.data_ptr<T>(),
        lse.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gta_bwd_cuda(
    const at::Tensor& grad_out_, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
    const at::Tensor& out_, const at::Tensor& lse_, const at::Tensor& q_se3, const at::Tensor& k_se3,
    const at::Tensor& q_so3, const at::Tensor& k_so3, const at::Tensor& q_pos, const at::Tensor& k_pos,
    const at::Tensor& freqs, c10::IntArrayRef dims, const std::optional<at::Tensor>& key_mask, double scale,
    bool v_transform) {
  const char* opname = "phasor::gta_attention_bwd";
  const Dims D = check_bwd(opname, grad_out_, q_, k_, v_, out_, lse_, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos,
                           freqs, dims, key_mask);
  check_cuda_dtype(opname, q_);
  // check_bwd checks sizes and dtypes of these three but not their device: a CPU lse (or dO, O) next to
  // CUDA q would reach the kernels as a host pointer (illegal address, which poisons the context).
  check_device(opname, "grad_out", grad_out_, q_);
  check_device(opname, "out", out_, q_);
  check_device(opname, "lse", lse_, q_);
  const Shape S = shape_of(D);
  c10::cuda::CUDAGuard guard(q_.device());
  auto stream = c10::cuda::getCurrentCUDAStream();
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto gO = grad_out_.contiguous(), O = out_.contiguous(), lse = lse_.contiguous();
  const GeoHold geo{q_se3.contiguous(), k_se3.contiguous(), q_so3.contiguous(), k_so3.contiguous(),
                    q_pos.contiguous(), k_pos.contiguous(), freqs.contiguous()};
  const auto mask = key_mask ? key_mask->contiguous() : at::Tensor();
  const bool* mp = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  auto f32 = q.options().dtype(at::kFloat);
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  auto dq_se3 = at::zeros(q_se3.sizes(), f32), dk_se3 = at::zeros(k_se3.sizes(), f32);
  if (q.numel() == 0 || k.numel() == 0) {
    dq.zero_(), dk.zero_(), dv.zero_();
    return {dq, dk, dv, dq_se3, dk_se3};
  }
  auto dqt = at::empty(q.sizes(), f32), dkt = at::empty(k.sizes(), f32), dvt = at::empty(v.sizes(), f32);
  const bool need_ot = v_transform && D.se3 > 0;
  auto ot = need_ot ? at::empty(q.sizes(), f32) : at::Tensor();
  const GeoPtrs g = geo.ptrs();
  const KernelChoice choice = kernel_choice();
  const bool mma = choice != KernelChoice::kSimt && choice != KernelChoice::kMmaFwdOnly &&
                   gta_bwd_mma_supported(q.scalar_type(), D.d, D.Nq, D.Nk, q.get_device());
  if (mma) {  // the attention core on tensor cores; the same float32 dqt, dkt, dvt, ot for the kernels below
    gta_bwd_mma(S, g, q, k, v, gO, O, lse, mask, scale, v_transform, choice == KernelChoice::kMmaAtomic, dqt, dkt,
                dvt, ot, stream);
  }
  at::Tensor qt, dot_t, Dv;  // SIMT scratch
  if (!mma) {
    qt = at::empty(q.sizes(), f32), dot_t = at::empty(q.sizes(), f32), Dv = at::empty({D.B, D.H, D.Nq}, f32);
  }
  const int threads = kWarps * kWarpSize;
  const size_t dp = D.d + 1;
  dispatch_storage(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    if (!mma) {
      const int64_t rows_q = D.B * D.H * D.Nq;
      gta_bwd_prologue_kernel<T><<<phasor::cuda::grid_for(phasor::cuda::ceil_div<int64_t>(rows_q, kWarps), opname,
                                                          "rows"),
                                   threads, 0, stream>>>(S, g, q.data_ptr<T>(), gO.data_ptr<T>(), O.data_ptr<T>(),
                                                         float(scale), v_transform, qt.data_ptr<float>(),
                                                         dot_t.data_ptr<float>(), Dv.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const dim3 grid_k(phasor::cuda::grid_for(phasor::cuda::ceil_div<int64_t>(D.Nk, kWarps), opname, "key blocks"),
                        phasor::cuda::grid_for(D.B * D.H, opname, "(batch, head) pairs"));
      gta_bwd_kv_kernel<T><<<grid_k, threads, sizeof(float) * ((2 * kWarps + 2 * kTile) * dp + 2 * kTile), stream>>>(
          S, g, k.data_ptr<T>(), v.data_ptr<T>(), qt.data_ptr<float>(), dot_t.data_ptr<float>(), Dv.data_ptr<float>(),
          lse.data_ptr<float>(), mp, v_transform, dkt.data_ptr<float>(), dvt.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const dim3 grid_q(phasor::cuda::grid_for(phasor::cuda::ceil_div<int64_t>(D.Nq, kWarps), opname, "query blocks"),
                        grid_k.y);
      gta_bwd_q_kernel<T><<<grid_q, threads, sizeof(float) * (2 * kWarps + 2 * kTile) * dp, stream>>>(
          S, g, k.data_ptr<T>(), v.data_ptr<T>(), qt.data_ptr<float>(), dot_t.data_ptr<float>(), Dv.data_ptr<float>(),
          lse.data_ptr<float>(), mp, float(scale), v_transform, dqt.data_ptr<float>(),
          need_ot ? ot.data_ptr<float>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (D.se3 > 0) {  // q~ = P^T q: dP += q dq~^T (+ dO o~^T); k~ = P^-1 k: dP^-1 += dk~ k^T (+ dv~ v^T)
      const int sq = se3_grad_splits(S, D.Nq, D.Vq), sk = se3_grad_splits(S, D.Nk, D.Vk);
      auto part_q = at::empty({D.B * D.Vq, sq, 16}, f32), part_k = at::empty({D.B * D.Vk, sk, 16}, f32);
      gta_se3_grad_kernel<T, float><<<phasor::cuda::grid_for(D.B * D.Vq * sq, opname, "views"), 256, 0, stream>>>(
          S, int(D.Nq), int(D.Vq), sq, q.data_ptr<T>(), dqt.data_ptr<float>(), need_ot ? gO.data_ptr<T>() : nullptr,
          need_ot ? ot.data_ptr<float>() : nullptr, part_q.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      gta_se3_grad_kernel<float, T><<<phasor::cuda::grid_for(D.B * D.Vk * sk, opname, "views"), 256, 0, stream>>>(
          S, int(D.Nk), int(D.Vk), sk, dkt.data_ptr<float>(), k.data_ptr<T>(),
          v_transform ? dvt.data_ptr<float>() : nullptr, v_transform ? v.data_ptr<T>() : nullptr,
          part_k.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      dq_se3.copy_(part_q.sum(1).view(dq_se3.sizes()));
      dk_se3.copy_(part_k.sum(1).view(dk_se3.sizes()));
    }
    const int64_t nq = q.numel(), nk = k.numel();
    const unsigned bq = phasor::cuda::grid_for(phasor::cuda::ceil_div<int64_t>(nq, 256), opname, "elements");
    const unsigned bk = phasor::cuda::grid_for(phasor::cuda::ceil_div<int64_t>(nk, 256), opname, "elements");
    gta_bwd_epilogue_kernel<T><<<bq, 256, 0, stream>>>(S, g, true, int(D.Nq), dqt.data_ptr<float>(), dq.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    gta_bwd_epilogue_kernel<T><<<bk, 256, 0, stream>>>(S, g, false, int(D.Nk), dkt.data_ptr<float>(), dk.data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (v_transform) {
      gta_bwd_epilogue_kernel<T><<<bk, 256, 0, stream>>>(S, g, false, int(D.Nk), dvt.data_ptr<float>(), dv.data_ptr<T>());
    } else {
      copy_cast_kernel<T><<<bk, 256, 0, stream>>>(nk, dvt.data_ptr<float>(), dv.data_ptr<T>());
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dq, dk, dv, dq_se3, dk_se3};
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CUDA, m) {
  m.impl("gta_attention_fwd", &gta_fwd_cuda);
  m.impl("gta_attention_bwd", &gta_bwd_cuda);
}

}  // namespace phasor::gta
