// Tensor-core forward of GTA attention (FlashAttention-2 style) for float16/bfloat16 storage.
//
// A block takes kBM = 64 queries of one (batch, head): 4 warps of 16 query rows. The prologue applies
// P^T (and scale * log2 e) to the Q rows in float32, stores Q~ in shared memory and loads it into
// m16n8k16 A fragments that stay in registers. Key tiles of kBN = 64 arrive by cp.async; K~ = P^-1 K
// and V~ = P^-1 V are either transformed from a raw staging tile in shared memory by every block
// (on-load) or computed once per call by gta_kv_prepass_kernel into O(N) scratch that the blocks then
// copy (pre-pass; double-buffered). S = Q~ K~^T and O += P V~ use mma.sync with float32 accumulators
// (B fragments from ldmatrix, .trans for V); the online softmax runs in registers in base 2. The
// epilogue normalises, stages O~ in float32 shared memory, applies P per token and writes O and the
// natural-log lse, exactly the SIMT kernel's outputs (fully masked rows: 0 and -inf).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .f16/.bf16; g = lane / 4, t = lane % 4):
//   A (16x16, row-major) regs: {A[g][2t..+1], A[g+8][2t..+1], A[g][2t+8..+9], A[g+8][2t+8..+9]}
//   B (16x8,  "col")     regs: {B[2t..+1][g], B[2t+8..+9][g]}
//   C (16x8, f32): c0, c1 = C[g][2t], C[g][2t+1]; c2, c3 = C[g+8][2t], C[g+8][2t+1]
//   ldmatrix.x4: lanes 8m .. 8m+7 give the row addresses of matrix m; register m of a lane holds row
//   lane / 4, columns 2 (lane % 4) .. +1 of matrix m (.trans: column lane / 4, rows 2 (lane % 4) .. +1).
#include "gta/gta_cuda_mma.h"
#include "gta/gta_cuda_mma_ptx.cuh"

#include "common/cuda_host.h"
#include "common/cuda_utils.cuh"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>

namespace phasor::gta {
namespace {

using dev::F4;
using dev::GeoPtrs;
using dev::Shape;
using dev::TokenOp;
using namespace mma_ptx;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBM = 16 * kWarps;  // queries per block
constexpr int kBN = 64;           // keys per tile
constexpr float kLn2 = 0.6931471805599453f;

// ------------------------------------------------------------------ kernels
template <typename T>
struct Args {
  Shape S;
  GeoPtrs g;
  const T* q;
  const T* k;   // raw K (on-load) or K~ (pre-pass)
  const T* v;   // raw V (on-load, or v_transform false) or V~ (pre-pass)
  const bool* mask;
  float qscale;  // softmax scale * log2(e), folded into Q~
  bool vt;       // v_transform
  bool pre;      // k, v hold K~, V~ already
  T* out;
  float* lse;
};

// Shared memory of gta_fwd_mma_kernel<T, D>: Q~ [kBM][D+8], 2 buffers of (K [kBN][D+8], V [kBN][D+8]),
// key bias [2][kBN] float. Rows padded by 16 bytes: the 8 row addresses of each ldmatrix phase fall in
// distinct 4-bank groups for D = 32, 64, 96, 128.
template <typename T, int D>
constexpr size_t smem_bytes() {
  return size_t(kBM + 4 * kBN) * (D + 8) * sizeof(T) + 2 * kBN * sizeof(float);
}

template <typename T, int D>
__global__ void __launch_bounds__(kThreads) gta_fwd_mma_kernel(const Args<T> A) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync bf16, ldmatrix and cp.async need sm_80 (the host never launches this there)
#else
  constexpr int kLd = D + 8;     // T per shared row
  constexpr int kC8 = D / 8;     // 16-byte chunks per row
  constexpr int kC4 = D / 4;     // 4-channel transform chunks per row
  constexpr int kKS = D / 16;    // k-steps of Q K^T; pairs of 8-channel output tiles of P V
  constexpr int kTileT = kBN * kLd;
  static_assert(D % 16 == 0 && D >= 32 && D <= 128, "head dim");
  static_assert(kBM * kC4 % kThreads == 0 && kBN * kC4 % kThreads == 0 && kBN * kC8 % kThreads == 0, "tiling");
  static_assert(kBM * (D + 8) * sizeof(float) <= 4 * kTileT * sizeof(T), "O~ staging fits the tile buffers");

  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);
  T* sBuf = sQ + kBM * kLd;                                          // buffer u: K at sBuf + 2 u kTileT, V next
  float* sBias = reinterpret_cast<float*>(sBuf + 4 * kTileT);        // [2][kBN]: 0 or -inf per key

  const Shape& S = A.S;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int gr = lane / 4, tg = lane % 4;
  const int bh = blockIdx.x, b = bh / S.H;
  const int q0 = blockIdx.y * kBM;
  const int64_t row0 = int64_t(bh) * S.Nq;  // (b, h, query 0) in out / lse rows
  const T* kb = A.k + int64_t(bh) * S.Nk * D;
  const T* vb = A.v + int64_t(bh) * S.Nk * D;
  const bool* mb = A.mask ? A.mask + int64_t(b) * S.Nk : nullptr;
  const int ntiles = (S.Nk + kBN - 1) / kBN;

  // Tile t: cp.async of its K and V rows (zeros past Nk) into buffer `pre ? t & 1 : 0`; its key bias
  // into sBias[t & 1] (plain stores, visible after the next __syncthreads).
  auto issue = [&](int t) {
    const int j0 = t * kBN;
    T* dk = sBuf + (A.pre ? (t & 1) : 0) * 2 * kTileT;
    T* dv = dk + kTileT;
#pragma unroll
    for (int it = 0; it < kBN * kC8 / kThreads; ++it) {
      const int idx = tid + it * kThreads;
      const int r = idx / kC8, c = (idx % kC8) * 8, j = j0 + r;
      const bool ok = j < S.Nk;
      const int64_t off = int64_t(ok ? j : 0) * D + c;
      cp_async16(smem_u32(dk + r * kLd + c), kb + off, ok);
      cp_async16(smem_u32(dv + r * kLd + c), vb + off, ok);
    }
    cp_async_commit();
    if (tid < kBN) {
      const int j = j0 + tid;
      sBias[(t & 1) * kBN + tid] = (j < S.Nk && (mb == nullptr || mb[j])) ? 0.f : -INFINITY;
    }
  };

  // ---- prologue: Q~ = scale log2(e) P^T q (zeros past Nq), one (row, 4-channel chunk) per thread.
  // A warp takes 4 consecutive chunks of 8 rows: 32 bytes of each row, whole sectors (one chunk of 32
  // rows, warp-uniform in segment, touched 4x the sectors it used). A warp whose 4 chunks straddle
  // two segments (triv / se3 / so3 / so2) diverges there, for one pass.
  auto row_chunk = [](int idx, int& r, int& c) {
    r = (idx >> 2) % kBM;
    c = (((idx >> 2) / kBM) * 4 + (idx & 3)) * 4;
  };
  static_assert(kC4 % 4 == 0, "4 chunks per row group");
#pragma unroll 1
  for (int idx = tid; idx < kBM * kC4; idx += kThreads) {
    int r, c;
    row_chunk(idx, r, c);
    const int i = q0 + r;
    uint2 packed = make_uint2(0u, 0u);
    if (i < S.Nq) {
      const LoadT<T> ld{A.q + (row0 + i) * D};
      const TokenOp op = dev::q_op(S, A.g, b, i, true, 1.f);
      F4 y, unused;
      dev::apply_chunk4(S, A.g.freqs, op, c, ld, y, ld, unused, false);
#pragma unroll
      for (int e = 0; e < 4; ++e) y.v[e] *= A.qscale;
      packed = pack4<T>(y);
    }
    *reinterpret_cast<uint2*>(sQ + r * kLd + c) = packed;
  }
  if (ntiles > 0) issue(0);
  __syncthreads();  // sQ complete

  uint32_t qa[kKS][4];
  {
    const T* base = sQ + warp * 16 * kLd + mma_layout::q_lane(lane, kLd);
#pragma unroll
    for (int ks = 0; ks < kKS; ++ks) ldsm_x4(smem_u32(base + ks * 16), qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3]);
  }

  float o[2 * kKS][4];
#pragma unroll
  for (int n = 0; n < 2 * kKS; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m_lo = -INFINITY, m_hi = -INFINITY;  // running max (base 2) of rows gr and gr + 8
  float l_lo = 0.f, l_hi = 0.f;              // this thread's part of the running sums

  // ldmatrix row addresses of this lane inside a tile (gta_cuda_mma.h)
  const int k_lane = mma_layout::k_lane(lane, kLd);
  const int v_lane = mma_layout::v_lane(lane, kLd);

#pragma unroll 1
  for (int t = 0; t < ntiles; ++t) {
    int cb;  // buffer the MMAs read
    if (A.pre) {
      if (t + 1 < ntiles) {
        issue(t + 1);  // into buffer (t+1) & 1: its last readers (tile t-1) passed the barrier ending t-1
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();  // tile t (and its bias) visible to every warp
      cb = t & 1;
    } else {
      cp_async_wait<0>();
      __syncthreads();  // raw tile t visible; every warp is done with tile t-1 in buffer 1
      const int j0 = t * kBN;
      const T* rk = sBuf;
      const T* rv = sBuf + kTileT;
      T* wk = sBuf + 2 * kTileT;
      T* wv = wk + kTileT;
#pragma unroll 1
      for (int idx = tid; idx < kBN * kC4; idx += kThreads) {
        const int c = (idx / kBN) * 4, r = idx % kBN, j = j0 + r;  // a warp-uniform chunk (shared to shared)
        uint2 pk = make_uint2(0u, 0u), pv = make_uint2(0u, 0u);
        if (j < S.Nk) {
          const TokenOp op = dev::k_op(S, A.g, b, j, false, 1.f);
          F4 yk, yv;
          dev::apply_chunk4(S, A.g.freqs, op, c, LoadT<T>{rk + r * kLd}, yk, LoadT<T>{rv + r * kLd}, yv, A.vt);
          pk = pack4<T>(yk);
          pv = A.vt ? pack4<T>(yv) : *reinterpret_cast<const uint2*>(rv + r * kLd + c);
        }
        *reinterpret_cast<uint2*>(wk + r * kLd + c) = pk;
        *reinterpret_cast<uint2*>(wv + r * kLd + c) = pv;
      }
      __syncthreads();  // K~, V~ of tile t visible; every warp is done reading the raw buffer
      if (t + 1 < ntiles) issue(t + 1);
      cb = 1;
    }
    const T* tK = sBuf + cb * 2 * kTileT;
    const T* tV = tK + kTileT;
    const float* bias = sBias + (t & 1) * kBN;

    // S = Q~ K~^T (base-2 logits): 16 rows x 64 keys per warp, 8 n-tiles of 8 keys
    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < kKS; ++ks) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4(smem_u32(tK + np * 16 * kLd + ks * 16 + k_lane), b0, b1, b2, b3);
        mma16816<T>(s[2 * np], qa[ks], b0, b1);
        mma16816<T>(s[2 * np + 1], qa[ks], b2, b3);
      }
    }

    // online softmax; the 4 threads of a quad (same gr) share rows gr and gr + 8
    float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      const float2 kb2 = *reinterpret_cast<const float2*>(bias + n * 8 + 2 * tg);
      s[n][0] += kb2.x, s[n][1] += kb2.y, s[n][2] += kb2.x, s[n][3] += kb2.y;
      mx_lo = fmaxf(mx_lo, fmaxf(s[n][0], s[n][1]));
      mx_hi = fmaxf(mx_hi, fmaxf(s[n][2], s[n][3]));
    }
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 1));
    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, 2));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 1));
    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, 2));
    const float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
    // every key so far masked: subtract 0 instead, so exp2(-inf - (-inf)) never happens (p, alpha = 0)
    const float mu_lo = mn_lo == -INFINITY ? 0.f : mn_lo, mu_hi = mn_hi == -INFINITY ? 0.f : mn_hi;
    const float al_lo = exp2f(m_lo - mu_lo), al_hi = exp2f(m_hi - mu_hi);
    m_lo = mn_lo, m_hi = mn_hi;
    float ps_lo = 0.f, ps_hi = 0.f;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      s[n][0] = exp2f(s[n][0] - mu_lo);
      s[n][1] = exp2f(s[n][1] - mu_lo);
      s[n][2] = exp2f(s[n][2] - mu_hi);
      s[n][3] = exp2f(s[n][3] - mu_hi);
      ps_lo += s[n][0] + s[n][1];
      ps_hi += s[n][2] + s[n][3];
    }
    l_lo = l_lo * al_lo + ps_lo;
    l_hi = l_hi * al_hi + ps_hi;
#pragma unroll
    for (int n = 0; n < 2 * kKS; ++n) o[n][0] *= al_lo, o[n][1] *= al_lo, o[n][2] *= al_hi, o[n][3] *= al_hi;

    // O += P V~: the C fragments of n-tiles 2kk, 2kk+1 are the A fragment of keys 16kk .. 16kk+15
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const uint32_t pa[4] = {Pack<T>::pack(s[2 * kk][0], s[2 * kk][1]), Pack<T>::pack(s[2 * kk][2], s[2 * kk][3]),
                              Pack<T>::pack(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              Pack<T>::pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < kKS; ++dp) {
        uint32_t b0, b1, b2, b3;
        ldsm_x4_trans(smem_u32(tV + kk * 16 * kLd + dp * 16 + v_lane), b0, b1, b2, b3);
        mma16816<T>(o[2 * dp], pa, b0, b1);
        mma16816<T>(o[2 * dp + 1], pa, b2, b3);
      }
    }
    if (A.pre) __syncthreads();  // buffer t & 1 is refilled (tile t+2) in the next iteration
  }

  // ---- epilogue
  cp_async_wait<0>();
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 1);
  l_lo += __shfl_xor_sync(0xffffffffu, l_lo, 2);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 1);
  l_hi += __shfl_xor_sync(0xffffffffu, l_hi, 2);
  __syncthreads();  // every warp is done with the tile buffers: they now hold O~ [kBM][D+8] float32
  constexpr int kLdO = D + 8;
  float* sO = reinterpret_cast<float*>(sBuf);
  const float inv_lo = l_lo > 0.f ? 1.f / l_lo : 0.f, inv_hi = l_hi > 0.f ? 1.f / l_hi : 0.f;
  const int r_lo = warp * 16 + gr, r_hi = r_lo + 8;
#pragma unroll
  for (int n = 0; n < 2 * kKS; ++n) {
    *reinterpret_cast<float2*>(sO + r_lo * kLdO + n * 8 + 2 * tg) = make_float2(o[n][0] * inv_lo, o[n][1] * inv_lo);
    *reinterpret_cast<float2*>(sO + r_hi * kLdO + n * 8 + 2 * tg) = make_float2(o[n][2] * inv_hi, o[n][3] * inv_hi);
  }
  if (tg == 0) {  // lse = ln(sum_j exp(scaled logit)) = ln 2 (m + log2 l); no key: -inf
    if (q0 + r_lo < S.Nq) A.lse[row0 + q0 + r_lo] = l_lo > 0.f ? (m_lo + log2f(l_lo)) * kLn2 : -INFINITY;
    if (q0 + r_hi < S.Nq) A.lse[row0 + q0 + r_hi] = l_hi > 0.f ? (m_hi + log2f(l_hi)) * kLn2 : -INFINITY;
  }
  __syncthreads();
#pragma unroll 1
  for (int idx = tid; idx < kBM * kC4; idx += kThreads) {  // (row, chunk) as in the prologue: whole sectors
    int r, c;
    row_chunk(idx, r, c);
    const int i = q0 + r;
    if (i >= S.Nq) continue;
    const LoadF ld{sO + r * kLdO};
    F4 y;
    if (A.vt) {
      const TokenOp op = dev::q_op(S, A.g, b, i, false, -1.f);
      F4 unused;
      dev::apply_chunk4(S, A.g.freqs, op, c, ld, y, ld, unused, false);
    } else {
      y = ld(c);
    }
    *reinterpret_cast<uint2*>(A.out + (row0 + i) * D + c) = pack4<T>(y);
  }
#endif
}

// K~ = P^-1 K and (v_transform) V~ = P^-1 V into scratch: one thread per (key row, 4-channel chunk).
// The same apply_chunk4 and rounding as the on-load path, so both paths give the same bits.
template <typename T, int D>
__global__ void gta_kv_prepass_kernel(Shape S, GeoPtrs g, const T* __restrict__ k, const T* __restrict__ v, bool vt,
                                      T* __restrict__ kt, T* __restrict__ vtr) {
  constexpr int kC4 = D / 4;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= int64_t(S.B) * S.H * S.Nk * kC4) return;
  const int64_t row = idx / kC4;
  const int c = int(idx % kC4) * 4;
  const int j = int(row % S.Nk), b = int(row / (int64_t(S.H) * S.Nk));
  const TokenOp op = dev::k_op(S, g, b, j, false, 1.f);
  F4 yk, yv;
  dev::apply_chunk4(S, g.freqs, op, c, LoadT<T>{k + row * D}, yk, LoadT<T>{v + row * D}, yv, vt);
  *reinterpret_cast<uint2*>(kt + row * D + c) = pack4<T>(yk);
  if (vt) *reinterpret_cast<uint2*>(vtr + row * D + c) = pack4<T>(yv);
}

// ------------------------------------------------------------------ host
template <typename T, int D>
void launch_prepass(const Shape& S, const GeoPtrs& g, const at::Tensor& k, const at::Tensor& v, bool vt,
                    const at::Tensor& kt, const at::Tensor& vtt, cudaStream_t stream) {
  const int64_t items = k.numel() / 4;
  gta_kv_prepass_kernel<T, D><<<phasor::cuda::grid_for(phasor::cuda::ceil_div<int64_t>(items, 256),
                                                       "phasor::gta_attention", "elements"),
                                256, 0, stream>>>(S, g, reinterpret_cast<const T*>(k.data_ptr()),
                                                  reinterpret_cast<const T*>(v.data_ptr()), vt,
                                                  reinterpret_cast<T*>(kt.data_ptr()),
                                                  vt ? reinterpret_cast<T*>(vtt.data_ptr()) : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T, int D>
void launch(const Shape& S, const GeoPtrs& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
            const at::Tensor& mask, double scale, bool vt, bool pre, const at::Tensor& out, const at::Tensor& lse,
            cudaStream_t stream) {
  const char* op = "phasor::gta_attention_fwd";
  const T* kp = reinterpret_cast<const T*>(k.data_ptr());
  const T* vp = reinterpret_cast<const T*>(v.data_ptr());
  at::Tensor kt, vtt;  // pre-pass scratch, alive until the attention kernel has been queued (stream order)
  if (pre && k.numel() > 0) {
    kt = at::empty(k.sizes(), k.options());
    if (vt) vtt = at::empty(v.sizes(), v.options());
    launch_prepass<T, D>(S, g, k, v, vt, kt, vtt, stream);
    kp = reinterpret_cast<const T*>(kt.data_ptr());
    if (vt) vp = reinterpret_cast<const T*>(vtt.data_ptr());
  }
  Args<T> a{S,
            g,
            reinterpret_cast<const T*>(q.data_ptr()),
            kp,
            vp,
            mask.defined() ? mask.data_ptr<bool>() : nullptr,
            float(scale * 1.4426950408889634),
            vt,
            pre,
            reinterpret_cast<T*>(out.data_ptr()),
            lse.data_ptr<float>()};
  constexpr size_t smem = smem_bytes<T, D>();
  auto kernel = gta_fwd_mma_kernel<T, D>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  const dim3 grid(phasor::cuda::grid_for(int64_t(S.B) * S.H, op, "(batch, head) pairs"),
                  unsigned(phasor::cuda::ceil_div(S.Nq, kBM)));
  kernel<<<grid, kThreads, smem, stream>>>(a);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void launch_d(int d, const Shape& S, const GeoPtrs& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
              const at::Tensor& mask, double scale, bool vt, bool pre, const at::Tensor& out, const at::Tensor& lse,
              cudaStream_t stream) {
  switch (d) {
    case 32: return launch<T, 32>(S, g, q, k, v, mask, scale, vt, pre, out, lse, stream);
    case 64: return launch<T, 64>(S, g, q, k, v, mask, scale, vt, pre, out, lse, stream);
    case 96: return launch<T, 96>(S, g, q, k, v, mask, scale, vt, pre, out, lse, stream);
    case 128: return launch<T, 128>(S, g, q, k, v, mask, scale, vt, pre, out, lse, stream);
    default: TORCH_CHECK(false, "phasor::gta_attention_fwd: no tensor-core kernel for head dim ", d);
  }
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

template <typename T>
void prepass_d(const Shape& S, const GeoPtrs& g, const at::Tensor& k, const at::Tensor& v, bool vt,
               const at::Tensor& kt, const at::Tensor& vtt, cudaStream_t stream) {
  switch (S.d) {
    case 32: return launch_prepass<T, 32>(S, g, k, v, vt, kt, vtt, stream);
    case 64: return launch_prepass<T, 64>(S, g, k, v, vt, kt, vtt, stream);
    case 96: return launch_prepass<T, 96>(S, g, k, v, vt, kt, vtt, stream);
    case 128: return launch_prepass<T, 128>(S, g, k, v, vt, kt, vtt, stream);
    default: TORCH_CHECK(false, "phasor::gta_attention: no tensor-core kernel for head dim ", S.d);
  }
}

}  // namespace

void gta_kv_prepass_mma(const Shape& S, const GeoPtrs& g, const at::Tensor& k, const at::Tensor& v, bool v_transform,
                        const at::Tensor& kt, const at::Tensor& vtt, cudaStream_t stream) {
  if (k.numel() == 0) return;
  TORCH_CHECK(k.data_ptr() != nullptr && reinterpret_cast<uintptr_t>(k.data_ptr()) % 8 == 0 &&
                  reinterpret_cast<uintptr_t>(v.data_ptr()) % 8 == 0,
              "phasor::gta_attention: K/V pre-pass needs 8-byte aligned rows");
  if (k.scalar_type() == at::kHalf) {
    prepass_d<__half>(S, g, k, v, v_transform, kt, vtt, stream);
  } else {
    TORCH_CHECK(k.scalar_type() == at::kBFloat16, "phasor::gta_attention: tensor-core kernel takes float16 or "
                "bfloat16, got ", k.scalar_type());
    prepass_d<__nv_bfloat16>(S, g, k, v, v_transform, kt, vtt, stream);
  }
}

bool gta_fwd_mma_supported(at::ScalarType dtype, int64_t d, int64_t Nq, int device) {
  if (dtype != at::kHalf && dtype != at::kBFloat16) return false;
  if (d != 32 && d != 64 && d != 96 && d != 128) return false;
  if (phasor::cuda::ceil_div<int64_t>(Nq, kBM) > 65535) return false;  // query blocks are grid.y
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  return major >= 8;
}

void gta_fwd_mma(const Shape& S, const GeoPtrs& g, const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                 const at::Tensor& mask, double scale, bool v_transform, MmaKvMode mode, const at::Tensor& out,
                 const at::Tensor& lse, cudaStream_t stream) {
  // cp.async moves 16 bytes and the loads 8: a contiguous view at an odd offset is copied (a fresh
  // allocation is aligned), so results never depend on where the input starts.
  const at::Tensor q = aligned16(q_) ? q_ : q_.clone();
  const at::Tensor k = aligned16(k_) ? k_ : k_.clone();
  const at::Tensor v = aligned16(v_) ? v_ : v_.clone();
  // On-load repeats the K/V transform in each of the ceil(Nq / kBM) query blocks; the pre-pass does it
  // once at the cost of one read and one write of K and V and a second launch.
  const bool pre = mode == MmaKvMode::kPrepass ||
                   (mode == MmaKvMode::kAuto && phasor::cuda::ceil_div<int64_t>(S.Nq, kBM) > 2);
  if (q.scalar_type() == at::kHalf) {
    launch_d<__half>(S.d, S, g, q, k, v, mask, scale, v_transform, pre, out, lse, stream);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, "phasor::gta_attention_fwd: tensor-core kernel takes float16 or "
                "bfloat16, got ", q.scalar_type());
    launch_d<__nv_bfloat16>(S.d, S, g, q, k, v, mask, scale, v_transform, pre, out, lse, stream);
  }
}

}  // namespace phasor::gta
