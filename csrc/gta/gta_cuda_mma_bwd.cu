// Tensor-core backward of GTA attention (FlashAttention-2 recomputation) for float16/bfloat16 storage.
//
// It replaces the attention core of gta_cuda.cu's SIMT backward (prologue, key-side and query-side
// kernels) and writes the same float32 intermediates (dq~, dk~, dv~, o~), which the shared SIMT SE(3)
// reduction and epilogue kernels then consume. Kernels, in launch order:
//  1. prologue: Q~ = scale log2(e) P^T q, the forward's Q~ bits (so S below is the forward's S), and
//     do~ = P^T dO (dO without v_transform) in the storage type; delta = dO . O in float32.
//  2. K~, V~ by the forward's pre-pass (gta_kv_prepass_mma), into O(N) scratch.
//  3. key side: a block owns 64 keys (4 warps x 16) and streams query tiles (double-buffered cp.async).
//     Per warp: S^T = K~ Q~^T, P^T = exp2(S^T - lse log2 e), dV~ += P^T do~, dP^T = V~ do~^T,
//     dS^T = P^T (dP^T - delta), dK~ += dS^T Q~. Computing the transposed products keeps P^T and dS^T
//     in the C fragments that the next mma takes as its A operand: no trip through shared memory.
//  4. query side: a block owns 64 queries and streams key tiles: S, P, dP, dS as above untransposed,
//     dQ~ += dS K~ and (SE(3) with v_transform) o~ += P V~ in the channel tiles the SE(3) gradient reads.
// Every output element is written by one thread after a fixed-order sum: no atomics, results are
// bitwise repeatable. All accumulators are float32 in registers.
// Atomic-dQ variant (gta_bwd_mma's atomic_dq, FlashAttention-2's split): kernel 3 alone, which after each
// query tile parks dS^T (and P^T) in shared memory and adds its key block's dQ~ = scale dS K~ (o~ = P V~)
// share into zeroed float32 dqt (ot) with float atomics; kernel 4 is not run. S and dP are computed once
// per tile pair (5 block matmuls instead of 8); the sum order over key blocks, so the low bits, varies.
//
// Q~ carries log2(e): S is in base 2 and dK~ = scale sum dS q~ = ln 2 sum dS Q~. dS is dL/d(scale q~ . k~).
// Fragment layouts and the lane-address helpers: gta_cuda_mma.cu, gta_cuda_mma.h (mma_layout); the
// host check tests/gta/mma_layout_check.cu emulates both kernels' warp loops.
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

namespace phasor::gta {
namespace {

using dev::F4;
using dev::GeoPtrs;
using dev::Shape;
using dev::TokenOp;
using namespace mma_ptx;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kBR = 16 * kWarps;  // rows a block owns: keys (key side) or queries (query side)
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <int D>
constexpr int tile_nt() {
  return mma_layout::bwd_tile_nt(D);
}

template <typename T>
struct BwdArgs {
  Shape S;
  const T* qt;          // [B,H,Nq,D] Q~ = scale log2(e) P^T q
  const T* dot;         // [B,H,Nq,D] do~
  const float* delta;   // [B,H,Nq] dO . O
  const float* lse;     // [B,H,Nq] natural log; -inf: the query sees no key
  const T* kt;          // [B,H,Nk,D] K~
  const T* vt;          // [B,H,Nk,D] V~ (V without v_transform)
  const bool* mask;     // [B,Nk] or null
  float scale;          // softmax scale
  int ot_lo, ot_hi;     // o~ is computed in the 16-channel tiles [ot_lo, ot_hi)
  float* dqt;
  float* dkt;
  float* dvt;
  float* ot;            // null: no o~
};

// Base-2 row offset of P = exp2(S - L): a query with no key gets +inf, so every P of it is exp2(-inf) = 0
// (also against a masked key's -inf bias) and no inf - inf arises.
__device__ __forceinline__ float lse2(float l) { return l == -INFINITY ? INFINITY : l * kLog2e; }

// The C fragments of n-tiles 2kk, 2kk+1 (16 rows x 16 columns of x) as the A fragment of columns 16kk ..
// 16kk + 15 (the forward's P repacking).
template <typename T, int NT>
__device__ __forceinline__ void c_to_a(const float (&x)[NT][4], int kk, uint32_t (&a)[4]) {
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int n = mma_layout::c_to_a_tile(kk, r), e = mma_layout::c_to_a_elem(r);
    a[r] = Pack<T>::pack(x[n][e], x[n][e + 1]);
  }
}

// acc[16 rows x 8 NT] = A[16 rows x D] B^T, A at `a` (row-major rows of this warp, lane address
// included), B rows at `b` (row-major, n = row; lane address k_lane included).
template <typename T, int D, int NT, int kLd>
__device__ __forceinline__ void mma_abt(float (&acc)[NT][4], const T* a, const T* b) {
#pragma unroll
  for (int n = 0; n < NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks) {
    uint32_t fa[4];
    ldsm_x4(smem_u32(a + mma_layout::abt_a(ks)), fa[0], fa[1], fa[2], fa[3]);
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b0, b1, b2, b3;
      ldsm_x4(smem_u32(b + mma_layout::abt_b(np, ks, kLd)), b0, b1, b2, b3);
      mma16816<T>(acc[2 * np], fa, b0, b1);
      mma16816<T>(acc[2 * np + 1], fa, b2, b3);
    }
  }
}

// acc[16 rows x D] += X[16 rows x 8 NT] B, X in C fragments, B rows at `b` (row-major, k = row; lane
// address v_lane included). Channel pairs (16 columns) outside [lo, hi) are skipped (warp-uniform).
template <typename T, int D, int NT, int kLd>
__device__ __forceinline__ void mma_cb(float (&acc)[D / 8][4], const float (&x)[NT][4], const T* b, int lo = 0,
                                       int hi = D / 16) {
#pragma unroll
  for (int kk = 0; kk < NT / 2; ++kk) {
    uint32_t fa[4];
    c_to_a<T, NT>(x, kk, fa);
#pragma unroll
    for (int dp = 0; dp < D / 16; ++dp) {
      if (dp < lo || dp >= hi) continue;
      uint32_t b0, b1, b2, b3;
      ldsm_x4_trans(smem_u32(b + mma_layout::cb_b(kk, dp, kLd)), b0, b1, b2, b3);
      mma16816<T>(acc[2 * dp], fa, b0, b1);
      mma16816<T>(acc[2 * dp + 1], fa, b2, b3);
    }
  }
}

// Park a warp's 16 x 8 NT C fragments x (rows = its keys) in shared memory at `dst` (its first key row,
// row stride kLdX), rounded to T as c_to_a rounds them for the tensor cores.
template <typename T, int NT, int kLdX>
__device__ __forceinline__ void park_ct(T* dst, const float (&x)[NT][4], int lane) {
#pragma unroll
  for (int n = 0; n < NT; ++n) {
    *reinterpret_cast<uint32_t*>(dst + mma_layout::ct_store(n, lane, 0, kLdX)) = Pack<T>::pack(x[n][0], x[n][1]);
    *reinterpret_cast<uint32_t*>(dst + mma_layout::ct_store(n, lane, 2, kLdX)) = Pack<T>::pack(x[n][2], x[n][3]);
  }
}

// This warp's share of dst[i0 .., :] += mul X B over the block's kBR keys: X^T parked at sX ([kBR][kLdX],
// row = key), B = the block's rows at sB ([kBR][kLd], row = key). Warps split the 8 NT x D product by
// mma_layout::tb_*; channel pairs outside [lo, hi) are skipped; rows from nq on are not written.
// Plain float atomicAdd with the result unused compiles to RED.ADD.F32 (no return trip).
template <typename T, int D, int NT>
__device__ __forceinline__ void red_tb(float* dst, const T* sX, const T* sB, int i0, int nq, float mul, int lo,
                                       int hi) {
  constexpr int kTM = 8 * NT, kLdX = kTM + 8, kLd = D + 8, kPairs = D * kTM / 64 / 16;
  static_assert(kTM % 16 == 0 && 64 % kTM == 0 && D * kTM % (64 * 16) == 0, "warp split");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int rg = mma_layout::tb_rg(warp, kTM), dp0 = mma_layout::tb_dp0(warp, kTM, D);
  float acc[2 * kPairs][4];
#pragma unroll
  for (int n = 0; n < 2 * kPairs; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
  for (int kk = 0; kk < kBR / 16; ++kk) {
    uint32_t fa[4];
    ldsm_x4_trans(smem_u32(sX + mma_layout::tb_a(kk, rg, kLdX) + mma_layout::k_lane(lane, kLdX)), fa[0], fa[1],
                  fa[2], fa[3]);
#pragma unroll
    for (int dl = 0; dl < kPairs; ++dl) {
      if (dp0 + dl < lo || dp0 + dl >= hi) continue;
      uint32_t b0, b1, b2, b3;
      ldsm_x4_trans(smem_u32(sB + mma_layout::cb_b(kk, dp0 + dl, kLd) + mma_layout::v_lane(lane, kLd)), b0, b1, b2,
                    b3);
      mma16816<T>(acc[2 * dl], fa, b0, b1);
      mma16816<T>(acc[2 * dl + 1], fa, b2, b3);
    }
  }
  const int r = i0 + rg * 16 + lane / 4;
#pragma unroll
  for (int n = 0; n < 2 * kPairs; ++n) {
    if (dp0 + n / 2 < lo || dp0 + n / 2 >= hi) continue;
    const int c = dp0 * 16 + n * 8 + 2 * (lane % 4);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      if (r + 8 * h >= nq) continue;
      float* o = dst + int64_t(r + 8 * h) * D + c;
      atomicAdd(o, mul * acc[n][2 * h]);
      atomicAdd(o + 1, mul * acc[n][2 * h + 1]);
    }
  }
}

// Q~ (scaled), do~ and delta: one warp per query row, lane = 4-channel chunk (dev::apply_chunk4 with the
// forward prologue's op and rounding, q and dO sharing the token).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) gta_bwd_mma_prologue_kernel(Shape S, GeoPtrs g, const T* __restrict__ q,
                                                                       const T* __restrict__ dO,
                                                                       const T* __restrict__ O, float qscale,
                                                                       bool vt, T* __restrict__ qt,
                                                                       T* __restrict__ dot,
                                                                       float* __restrict__ delta) {
  static_assert(D % 4 == 0 && D <= 128, "a lane per 4 channels");
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;
  if (row >= int64_t(S.B) * S.H * S.Nq) return;  // warp-uniform
  const int b = int(row / (int64_t(S.H) * S.Nq)), i = int(row % S.Nq);
  const int c = 4 * lane;
  float part = 0.f;
  if (c < D) {
    const LoadT<T> lq{q + row * D}, lg{dO + row * D};
    const TokenOp op = dev::q_op(S, g, b, i, true, 1.f);
    F4 yq, yg;
    dev::apply_chunk4(S, g.freqs, op, c, lq, yq, lg, yg, vt);
#pragma unroll
    for (int e = 0; e < 4; ++e) yq.v[e] *= qscale;
    *reinterpret_cast<uint2*>(qt + row * D + c) = pack4<T>(yq);
    *reinterpret_cast<uint2*>(dot + row * D + c) =
        vt ? pack4<T>(yg) : *reinterpret_cast<const uint2*>(dO + row * D + c);
    const F4 go = lg(c), oo = LoadT<T>{O + row * D}(c);
#pragma unroll
    for (int e = 0; e < 4; ++e) part = fmaf(go.v[e], oo.v[e], part);
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) part += __shfl_xor_sync(0xffffffffu, part, o);
  if (lane == 0) delta[row] = part;
}

// Shared memory (bytes) of the two attention kernels: the block's own rows (2 x [kBR][D+8]), two buffers
// of two streamed tiles ([8 NT][D+8] each) and per-row floats of the streamed rows (key side: lse and
// delta, 2 x 2 x 8 NT; query side: the key bias, 2 x 8 NT).
template <typename T, int D>
constexpr size_t smem_kv() {
  return size_t(2 * kBR + 4 * 8 * tile_nt<D>()) * (D + 8) * sizeof(T) + 4 * 8 * tile_nt<D>() * sizeof(float);
}
// The atomic-dQ variant's parking space for dS^T (and P^T when o~ is wanted): [kBR][8 NT + 8] each.
template <typename T, int D>
constexpr size_t smem_park() {
  return size_t(kBR) * (8 * tile_nt<D>() + 8) * sizeof(T);
}
template <typename T, int D>
constexpr size_t smem_q() {
  return size_t(2 * kBR + 4 * 8 * tile_nt<D>()) * (D + 8) * sizeof(T) + 2 * 8 * tile_nt<D>() * sizeof(float);
}

// cp.async of `rows` rows (row0 .. row0 + rows, zeros from `n` on) of two [.., D] arrays into [rows][kLd].
template <typename T, int D, int kRows>
__device__ __forceinline__ void load_rows2(const T* src0, const T* src1, int row0, int n, T* dst0, T* dst1) {
  constexpr int kLd = D + 8, kC8 = D / 8;
  static_assert(kRows * kC8 % kThreads == 0, "tiling");
#pragma unroll
  for (int it = 0; it < kRows * kC8 / kThreads; ++it) {
    const int idx = threadIdx.x + it * kThreads;
    const int r = idx / kC8, c = (idx % kC8) * 8, j = row0 + r;
    const bool ok = j < n;
    const int64_t off = int64_t(ok ? j : 0) * D + c;
    cp_async16(smem_u32(dst0 + r * kLd + c), src0 + off, ok);
    cp_async16(smem_u32(dst1 + r * kLd + c), src1 + off, ok);
  }
}

// dK~, dV~ of 64 keys of one (batch, head) per block: grid (B H, ceil(Nk / 64)). kAtomic: also this key
// block's share of dQ~ (and o~) per query tile, added into the zeroed A.dqt (A.ot) by red_tb.
template <typename T, int D, bool kAtomic>
__global__ void __launch_bounds__(kThreads) gta_bwd_kv_mma_kernel(const BwdArgs<T> A) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // mma.sync bf16, ldmatrix and cp.async need sm_80 (the host never launches this there)
#else
  constexpr int NT = tile_nt<D>();
  constexpr int kLd = D + 8, kTM = 8 * NT, kTileT = kTM * kLd;
  static_assert(D % 16 == 0 && D >= 32 && D <= 128 && kTM <= kThreads, "shape");
  extern __shared__ __align__(16) unsigned char smem[];
  T* sK = reinterpret_cast<T*>(smem);                            // [kBR][kLd] K~ of the block's keys
  T* sV = sK + kBR * kLd;                                        // [kBR][kLd] V~
  T* sBuf = sV + kBR * kLd;                                      // buffer u: Q~ at sBuf + 2 u kTileT, do~ next
  float* sLD = reinterpret_cast<float*>(sBuf + 4 * kTileT);      // [2][2][kTM]: base-2 lse, delta
  constexpr int kLdX = kTM + 8;
  T* sDS = reinterpret_cast<T*>(sLD + 4 * kTM);                  // kAtomic: [kBR][kLdX] dS^T, then P^T
  T* sP = sDS + kBR * kLdX;
  const bool want_o = kAtomic && A.ot != nullptr;

  const Shape& S = A.S;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int gr = lane / 4, tg = lane % 4;
  const int bh = blockIdx.x, b = bh / S.H;
  const int j0 = blockIdx.y * kBR;
  const int64_t qrow0 = int64_t(bh) * S.Nq, krow0 = int64_t(bh) * S.Nk;
  const T* qb = A.qt + qrow0 * D;
  const T* ob = A.dot + qrow0 * D;
  const int ntiles = (S.Nq + kTM - 1) / kTM;

  load_rows2<T, D, kBR>(A.kt + krow0 * D, A.vt + krow0 * D, j0, S.Nk, sK, sV);
  cp_async_commit();
  // Query tile t into buffer t & 1 (cp.async, one group); its lse / delta by plain stores, visible
  // after the next __syncthreads.
  auto issue = [&](int t) {
    const int i0 = t * kTM;
    T* dq = sBuf + (t & 1) * 2 * kTileT;
    load_rows2<T, D, kTM>(qb, ob, i0, S.Nq, dq, dq + kTileT);
    cp_async_commit();
    if (tid < kTM) {
      const int i = i0 + tid;
      float* ld = sLD + (t & 1) * 2 * kTM;
      ld[tid] = i < S.Nq ? lse2(A.lse[qrow0 + i]) : INFINITY;
      ld[kTM + tid] = i < S.Nq ? A.delta[qrow0 + i] : 0.f;
    }
  };
  issue(0);  // ntiles >= 1: the host launches only for Nq >= 1

  // This thread's accumulator rows: keys kr_lo = 16 warp + gr and kr_hi = kr_lo + 8 of the block.
  const int kr_lo = warp * 16 + gr, kr_hi = kr_lo + 8;
  auto key_bias = [&](int r) {
    const int j = j0 + r;
    return (j < S.Nk && (A.mask == nullptr || A.mask[int64_t(b) * S.Nk + j])) ? 0.f : -INFINITY;
  };
  const float kb_lo = key_bias(kr_lo), kb_hi = key_bias(kr_hi);

  float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.f;

  const T* wK = sK + warp * 16 * kLd + mma_layout::q_lane(lane, kLd);  // A operand: this warp's K~ rows
  const T* wV = sV + warp * 16 * kLd + mma_layout::q_lane(lane, kLd);
  const int b_lane = mma_layout::k_lane(lane, kLd);   // B operand, n = smem row
  const int bt_lane = mma_layout::v_lane(lane, kLd);  // B operand, k = smem row (.trans)

#pragma unroll 1
  for (int t = 0; t < ntiles; ++t) {
    if (t + 1 < ntiles) {
      issue(t + 1);  // into buffer (t+1) & 1: its last readers (tile t-1) passed the barrier ending t-1
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();  // the block's K~ / V~ and query tile t (with its lse / delta) visible
    const T* tQ = sBuf + (t & 1) * 2 * kTileT;
    const T* tO = tQ + kTileT;
    const float* tL = sLD + (t & 1) * 2 * kTM;
    const float* tD = tL + kTM;

    // P^T = exp2(K~ Q~^T - L): rows = keys (gr, gr + 8), columns = queries n*8 + 2 tg + {0, 1}
    float p[NT][4];
    mma_abt<T, D, NT, kLd>(p, wK, tQ + b_lane);
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const float2 L = *reinterpret_cast<const float2*>(tL + n * 8 + 2 * tg);
      p[n][0] = exp2f(p[n][0] + kb_lo - L.x);
      p[n][1] = exp2f(p[n][1] + kb_lo - L.y);
      p[n][2] = exp2f(p[n][2] + kb_hi - L.x);
      p[n][3] = exp2f(p[n][3] + kb_hi - L.y);
    }
    mma_cb<T, D, NT, kLd>(dv, p, tO + bt_lane);  // dV~ += P^T do~
    if (want_o) park_ct<T, NT, kLdX>(sP + warp * 16 * kLdX, p, lane);

    // dS^T = P^T (V~ do~^T - delta)
    float ds[NT][4];
    mma_abt<T, D, NT, kLd>(ds, wV, tO + b_lane);
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const float2 dl = *reinterpret_cast<const float2*>(tD + n * 8 + 2 * tg);
      ds[n][0] = p[n][0] * (ds[n][0] - dl.x);
      ds[n][1] = p[n][1] * (ds[n][1] - dl.y);
      ds[n][2] = p[n][2] * (ds[n][2] - dl.x);
      ds[n][3] = p[n][3] * (ds[n][3] - dl.y);
    }
    mma_cb<T, D, NT, kLd>(dk, ds, tQ + bt_lane);  // dK~ += dS^T Q~ (Q~ carries log2 e)
    if constexpr (kAtomic) {  // dQ~ += scale dS K~ and o~ += P V~ over this block's keys
      park_ct<T, NT, kLdX>(sDS + warp * 16 * kLdX, ds, lane);
      __syncthreads();  // every warp's dS^T / P^T parked
      red_tb<T, D, NT>(A.dqt + qrow0 * D, sDS, sK, t * kTM, S.Nq, A.scale, 0, D / 16);
      if (want_o) red_tb<T, D, NT>(A.ot + qrow0 * D, sP, sV, t * kTM, S.Nq, 1.f, A.ot_lo, A.ot_hi);
    }
    __syncthreads();  // buffer t & 1 is refilled (tile t+2), and sDS / sP rewritten, in the next iteration
  }

  const int j_lo = j0 + kr_lo, j_hi = j0 + kr_hi;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + 2 * tg;
    if (j_lo < S.Nk) {
      *reinterpret_cast<float2*>(A.dkt + (krow0 + j_lo) * D + c) = make_float2(kLn2 * dk[n][0], kLn2 * dk[n][1]);
      *reinterpret_cast<float2*>(A.dvt + (krow0 + j_lo) * D + c) = make_float2(dv[n][0], dv[n][1]);
    }
    if (j_hi < S.Nk) {
      *reinterpret_cast<float2*>(A.dkt + (krow0 + j_hi) * D + c) = make_float2(kLn2 * dk[n][2], kLn2 * dk[n][3]);
      *reinterpret_cast<float2*>(A.dvt + (krow0 + j_hi) * D + c) = make_float2(dv[n][2], dv[n][3]);
    }
  }
#endif
}

// dQ~ (and o~) of 64 queries of one (batch, head) per block: grid (B H, ceil(Nq / 64)).
template <typename T, int D>
__global__ void __launch_bounds__(kThreads) gta_bwd_q_mma_kernel(const BwdArgs<T> A) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  constexpr int NT = tile_nt<D>();
  constexpr int kLd = D + 8, kTN = 8 * NT, kTileT = kTN * kLd;
  static_assert(D % 16 == 0 && D >= 32 && D <= 128 && kTN <= kThreads, "shape");
  extern __shared__ __align__(16) unsigned char smem[];
  T* sQ = reinterpret_cast<T*>(smem);                            // [kBR][kLd] Q~ of the block's queries
  T* sO = sQ + kBR * kLd;                                        // [kBR][kLd] do~
  T* sBuf = sO + kBR * kLd;                                      // buffer u: K~ at sBuf + 2 u kTileT, V~ next
  float* sBias = reinterpret_cast<float*>(sBuf + 4 * kTileT);    // [2][kTN]: 0 or -inf per key

  const Shape& S = A.S;
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int gr = lane / 4, tg = lane % 4;
  const int bh = blockIdx.x, b = bh / S.H;
  const int i0 = blockIdx.y * kBR;
  const int64_t qrow0 = int64_t(bh) * S.Nq, krow0 = int64_t(bh) * S.Nk;
  const T* kb = A.kt + krow0 * D;
  const T* vb = A.vt + krow0 * D;
  const bool* mb = A.mask ? A.mask + int64_t(b) * S.Nk : nullptr;
  const int ntiles = (S.Nk + kTN - 1) / kTN;

  load_rows2<T, D, kBR>(A.qt + qrow0 * D, A.dot + qrow0 * D, i0, S.Nq, sQ, sO);
  cp_async_commit();
  auto issue = [&](int t) {
    const int j0 = t * kTN;
    T* dk = sBuf + (t & 1) * 2 * kTileT;
    load_rows2<T, D, kTN>(kb, vb, j0, S.Nk, dk, dk + kTileT);
    cp_async_commit();
    if (tid < kTN) {
      const int j = j0 + tid;
      sBias[(t & 1) * kTN + tid] = (j < S.Nk && (mb == nullptr || mb[j])) ? 0.f : -INFINITY;
    }
  };
  issue(0);  // ntiles >= 1: the host launches only for Nk >= 1

  // This thread's rows: queries r_lo = 16 warp + gr and r_lo + 8 of the block.
  const int r_lo = warp * 16 + gr, r_hi = r_lo + 8;
  const int i_lo = i0 + r_lo, i_hi = i0 + r_hi;
  const float L_lo = i_lo < S.Nq ? lse2(A.lse[qrow0 + i_lo]) : INFINITY;
  const float L_hi = i_hi < S.Nq ? lse2(A.lse[qrow0 + i_hi]) : INFINITY;
  const float d_lo = i_lo < S.Nq ? A.delta[qrow0 + i_lo] : 0.f;
  const float d_hi = i_hi < S.Nq ? A.delta[qrow0 + i_hi] : 0.f;
  const bool want_o = A.ot != nullptr;

  float dq[D / 8][4], o[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;

  const T* wQ = sQ + warp * 16 * kLd + mma_layout::q_lane(lane, kLd);
  const T* wO = sO + warp * 16 * kLd + mma_layout::q_lane(lane, kLd);
  const int b_lane = mma_layout::k_lane(lane, kLd);
  const int bt_lane = mma_layout::v_lane(lane, kLd);

#pragma unroll 1
  for (int t = 0; t < ntiles; ++t) {
    if (t + 1 < ntiles) {
      issue(t + 1);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const T* tK = sBuf + (t & 1) * 2 * kTileT;
    const T* tV = tK + kTileT;
    const float* bias = sBias + (t & 1) * kTN;

    // P = exp2(Q~ K~^T + bias - L): rows = queries (gr, gr + 8), columns = keys n*8 + 2 tg + {0, 1}
    float p[NT][4];
    mma_abt<T, D, NT, kLd>(p, wQ, tK + b_lane);
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      const float2 kb2 = *reinterpret_cast<const float2*>(bias + n * 8 + 2 * tg);
      p[n][0] = exp2f(p[n][0] + kb2.x - L_lo);
      p[n][1] = exp2f(p[n][1] + kb2.y - L_lo);
      p[n][2] = exp2f(p[n][2] + kb2.x - L_hi);
      p[n][3] = exp2f(p[n][3] + kb2.y - L_hi);
    }
    if (want_o) mma_cb<T, D, NT, kLd>(o, p, tV + bt_lane, A.ot_lo, A.ot_hi);  // o~ += P V~

    // dS = P (do~ V~^T - delta)
    float ds[NT][4];
    mma_abt<T, D, NT, kLd>(ds, wO, tV + b_lane);
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      ds[n][0] = p[n][0] * (ds[n][0] - d_lo);
      ds[n][1] = p[n][1] * (ds[n][1] - d_lo);
      ds[n][2] = p[n][2] * (ds[n][2] - d_hi);
      ds[n][3] = p[n][3] * (ds[n][3] - d_hi);
    }
    mma_cb<T, D, NT, kLd>(dq, ds, tK + bt_lane);  // dQ~ += dS K~
    __syncthreads();
  }

#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int c = n * 8 + 2 * tg;
    if (i_lo < S.Nq) {
      *reinterpret_cast<float2*>(A.dqt + (qrow0 + i_lo) * D + c) = make_float2(A.scale * dq[n][0], A.scale * dq[n][1]);
      if (want_o) *reinterpret_cast<float2*>(A.ot + (qrow0 + i_lo) * D + c) = make_float2(o[n][0], o[n][1]);
    }
    if (i_hi < S.Nq) {
      *reinterpret_cast<float2*>(A.dqt + (qrow0 + i_hi) * D + c) = make_float2(A.scale * dq[n][2], A.scale * dq[n][3]);
      if (want_o) *reinterpret_cast<float2*>(A.ot + (qrow0 + i_hi) * D + c) = make_float2(o[n][2], o[n][3]);
    }
  }
#endif
}

// ------------------------------------------------------------------ host
template <typename T, int D>
void launch_bwd(const Shape& S, const GeoPtrs& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const at::Tensor& dO, const at::Tensor& O, const at::Tensor& lse, const at::Tensor& mask, double scale,
                bool vt, bool atomic_dq, const at::Tensor& dqt, const at::Tensor& dkt, const at::Tensor& dvt,
                const at::Tensor& ot, cudaStream_t stream) {
  const char* op = "phasor::gta_attention_bwd";
  auto ptr = [](const at::Tensor& t) { return reinterpret_cast<T*>(t.data_ptr()); };
  // scratch, alive until the kernels have been queued (stream order)
  const at::Tensor qt = at::empty(q.sizes(), q.options()), dot = at::empty(q.sizes(), q.options());
  const at::Tensor delta = at::empty({S.B, S.H, S.Nq}, q.options().dtype(at::kFloat));
  const at::Tensor kt = at::empty(k.sizes(), k.options());
  const at::Tensor vtt = vt ? at::empty(v.sizes(), v.options()) : v;
  const int64_t rows = int64_t(S.B) * S.H * S.Nq;
  gta_bwd_mma_prologue_kernel<T, D>
      <<<phasor::cuda::grid_for(phasor::cuda::ceil_div<int64_t>(rows, kWarps), op, "rows"), kThreads, 0, stream>>>(
          S, g, ptr(q), ptr(dO), ptr(O), float(scale * 1.4426950408889634), vt, ptr(qt), ptr(dot),
          delta.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gta_kv_prepass_mma(S, g, k, v, vt, kt, vtt, stream);

  const int lo = S.triv / 16, hi = (S.triv + S.se3 + 15) / 16;
  const BwdArgs<T> a{S, ptr(qt), ptr(dot), delta.data_ptr<float>(), lse.data_ptr<float>(), ptr(kt), ptr(vtt),
                     mask.defined() ? mask.data_ptr<bool>() : nullptr, float(scale), lo, hi,
                     dqt.data_ptr<float>(), dkt.data_ptr<float>(), dvt.data_ptr<float>(),
                     ot.defined() ? ot.data_ptr<float>() : nullptr};
  const unsigned bhs = phasor::cuda::grid_for(int64_t(S.B) * S.H, op, "(batch, head) pairs");
  const dim3 grid_kv(bhs, unsigned(phasor::cuda::ceil_div(S.Nk, kBR)));
  if (atomic_dq) {  // one kernel; the SE(3) reduction and epilogue then read the summed dqt / ot
    C10_CUDA_CHECK(cudaMemsetAsync(dqt.data_ptr(), 0, dqt.nbytes(), stream));
    if (ot.defined()) C10_CUDA_CHECK(cudaMemsetAsync(ot.data_ptr(), 0, ot.nbytes(), stream));
    const size_t smem = smem_kv<T, D>() + (ot.defined() ? 2 : 1) * smem_park<T, D>();
    auto kernel = gta_bwd_kv_mma_kernel<T, D, true>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(smem_kv<T, D>() + 2 * smem_park<T, D>())));
    kernel<<<grid_kv, kThreads, smem, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  {
    constexpr size_t smem = smem_kv<T, D>();
    auto kernel = gta_bwd_kv_mma_kernel<T, D, false>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<grid_kv, kThreads, smem, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  {
    constexpr size_t smem = smem_q<T, D>();
    auto kernel = gta_bwd_q_mma_kernel<T, D>;
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<dim3(bhs, unsigned(phasor::cuda::ceil_div(S.Nq, kBR))), kThreads, smem, stream>>>(a);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

template <typename T>
void launch_bwd_d(const Shape& S, const GeoPtrs& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& dO, const at::Tensor& O, const at::Tensor& lse, const at::Tensor& mask,
                  double scale, bool vt, bool atomic, const at::Tensor& dqt, const at::Tensor& dkt,
                  const at::Tensor& dvt, const at::Tensor& ot, cudaStream_t stream) {
  switch (S.d) {
    case 32: return launch_bwd<T, 32>(S, g, q, k, v, dO, O, lse, mask, scale, vt, atomic, dqt, dkt, dvt, ot, stream);
    case 64: return launch_bwd<T, 64>(S, g, q, k, v, dO, O, lse, mask, scale, vt, atomic, dqt, dkt, dvt, ot, stream);
    case 96: return launch_bwd<T, 96>(S, g, q, k, v, dO, O, lse, mask, scale, vt, atomic, dqt, dkt, dvt, ot, stream);
    case 128:
      return launch_bwd<T, 128>(S, g, q, k, v, dO, O, lse, mask, scale, vt, atomic, dqt, dkt, dvt, ot, stream);
    default: TORCH_CHECK(false, "phasor::gta_attention_bwd: no tensor-core kernel for head dim ", S.d);
  }
}

// cp.async moves 16 bytes and the loaders 8: a contiguous view at an odd offset is copied.
at::Tensor aligned(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
}

}  // namespace

bool gta_bwd_mma_supported(at::ScalarType dtype, int64_t d, int64_t Nq, int64_t Nk, int device) {
  return phasor::cuda::ceil_div<int64_t>(Nk, kBR) <= 65535 && gta_fwd_mma_supported(dtype, d, Nq, device);
}

void gta_bwd_mma(const Shape& S, const GeoPtrs& g, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                 const at::Tensor& dO, const at::Tensor& O, const at::Tensor& lse, const at::Tensor& mask,
                 double scale, bool v_transform, bool atomic_dq, const at::Tensor& dqt, const at::Tensor& dkt,
                 const at::Tensor& dvt, const at::Tensor& ot, cudaStream_t stream) {
  TORCH_CHECK(q.numel() > 0 && k.numel() > 0, "phasor::gta_attention_bwd: tensor-core kernels need Nq, Nk >= 1");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous(), "phasor::gta_attention_bwd: lse must be "
              "contiguous float32");
  const at::Tensor qa = aligned(q), ka = aligned(k), va = aligned(v), ga = aligned(dO), oa = aligned(O);
  if (q.scalar_type() == at::kHalf) {
    launch_bwd_d<__half>(S, g, qa, ka, va, ga, oa, lse, mask, scale, v_transform, atomic_dq, dqt, dkt, dvt, ot,
                         stream);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, "phasor::gta_attention_bwd: tensor-core kernel takes float16 or "
                "bfloat16, got ", q.scalar_type());
    launch_bwd_d<__nv_bfloat16>(S, g, qa, ka, va, ga, oa, lse, mask, scale, v_transform, atomic_dq, dqt, dkt, dvt,
                                ot, stream);
  }
}

}  // namespace phasor::gta
