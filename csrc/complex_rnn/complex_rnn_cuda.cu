// CUDA kernels of the cv-RNN run (separable Gaussian sheet, complex64), the whole S-step run of the
// batch in one launch with the state in shared memory. Two kernels, chosen per call:
//
// * "block" (the first kernel; PHASOR_CVRNN_CUDA_KERNEL=block selects it): one thread block per
//   image. Per step, all in shared memory:
//     1. rows:    T[h, w] = sum_q G_c[w, q] X[h, q]  over the band |q - w| <= rw,
//     2. columns: X[h, w] <- m (i omega X[h, w] + alpha s sum_p G_r[h, p] T[p, w]) (in place: each
//        thread reads only its own X[h, w] there), with the block's max |X|^2 for the renormalisation,
//     3. the saved window goes straight to global memory (phase or complex).
//   With batch 16 only 16 SMs work, and the global (layer-1) coupling costs ~N FMAs per pixel and pass.
//
// * "cluster" (the default): each image split by rows over C blocks (a thread-block cluster on
//   sm_90, C = 1 elsewhere), so batch 16 fills 128 SMs with C = 8. A block owns rows [r0, r1) of the
//   state, omega and mask. Per step either
//     band:     the row filter of its own rows, pushed (distributed shared memory) to every block
//               whose column filter needs those rows (|h - own row| <= rh), one cluster barrier, then
//               the column filter and update of its own rows from its local copy (same sums in the
//               same order as the block kernel, so the same floats); or
//     low-rank: where the CPU kernel runs the near-global coupling in low-rank form (same factors,
//               G = U diag(lambda) U^T per axis, products in double), P = X_own U_c, the partial
//               Z_b = U_r[own]^T P pushed to every block, one cluster barrier, Z = sum_b Z_b in rank
//               order (the same in every block), E = U_r[own] Z, Y = E U_c^T (O(r N) per pixel
//               instead of O(N)).
//   The renormalisation needs the image's max |X|^2: each block pushes its own max to every block
//   after its update, and the next step's cluster barrier (there anyway) publishes it, so it costs
//   no extra barrier; the saved sample t-1 is written in step t (its scale s is known only then),
//   the last one after one extra barrier. Shared buffers written by other blocks are double
//   buffered by step parity (a block can be one step ahead of a slower peer until the next barrier).
//
// Estimated per-step times on an H200 (from instruction counts, not measured; batch 16):
//   global coupling: block 64x64 ~25 us (reviewer), 32x32 ~6 us; cluster (C = 8, low-rank, rank 6)
//     ~1-1.5 us at both sizes (a few small double products, four block barriers, one cluster barrier).
//   local coupling:  block 64x64 ~10 us, 32x32 ~2 us; cluster (C = 8, band) 64x64 ~2-2.5 us (1.5 us of
//     shared-memory loads + ~0.5 us barriers and pushes), 32x32 ~0.7 us.
//   Register tiling of the band (the next step, ~1.8x on local 64x64) is not done.
// float32 state throughout (the spec: layer 2's phases are precision sensitive, so no TF32 / tensor
// cores). Device memory traffic is x0, omega, mask once and the window.
#include "complex_rnn/complex_rnn.h"

#include "common/cuda_host.h"
#include "common/cuda_utils.cuh"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

namespace phasor::cvrnn {
namespace {

using phasor::cuda::block_reduce;
using phasor::cuda::grid_for;

constexpr int kThreads = 512;
constexpr int64_t kDefaultSmem = 48 * 1024;  // above this a kernel must opt in

struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a > b ? a : b; }
};

struct Params {
  const c10::complex<float>* x0;
  const float* omega;
  const bool* mask;  // nullptr: every node keeps its coupling
  c10::complex<float>* out_c;
  float* out_phase;
  int H, W, rh, rw, start, stop;
  float alpha;
  bool renorm;
};

__device__ __forceinline__ float phase_of(float re, float im) {
  return (re == 0.f && im == 0.f) ? 0.f : atan2f(im, re);
}

// Shared memory: xr, xi, tr, ti, om, mk ([H * W] each), then gh [2 rh + 1], gw [2 rw + 1].
__global__ void __launch_bounds__(kThreads) cvrnn_run_kernel(Params p, double sigma) {
  extern __shared__ __align__(16) float smem[];
  const int H = p.H, W = p.W, HW = H * W;
  float* xr = smem;
  float* xi = xr + HW;
  float* tr = xi + HW;
  float* ti = tr + HW;
  float* om = ti + HW;
  float* mk = om + HW;
  float* gh = mk + HW;
  float* gw = gh + 2 * p.rh + 1;
  const int64_t b = blockIdx.x;
  const int64_t T = p.stop - p.start;
  // Taps in double, rounded once to float: the CPU kernel's and the reference's float taps exactly
  // (expf in float differs by an ulp or two, a systematic error in every coupling product).
  for (int k = threadIdx.x; k <= 2 * p.rh; k += blockDim.x) {
    const double d = double(k - p.rh) / double(H);
    gh[k] = float(exp(-d * d / (2.0 * sigma * sigma)));
  }
  for (int k = threadIdx.x; k <= 2 * p.rw; k += blockDim.x) {
    const double d = double(k - p.rw) / double(W);
    gw[k] = float(exp(-d * d / (2.0 * sigma * sigma)));
  }
  for (int j = threadIdx.x; j < HW; j += blockDim.x) {
    const c10::complex<float> x = p.x0[b * HW + j];
    const float m = (p.mask == nullptr || p.mask[b * HW + j]) ? 1.f : 0.f;
    xr[j] = m * x.real();
    xi[j] = m * x.imag();
    om[j] = p.omega[b * HW + j];
    mk[j] = m;
    if (p.start == 0) {  // sample 0 is x0 as given
      if (p.out_phase)
        p.out_phase[b * T * HW + j] = phase_of(x.real(), x.imag());
      else
        p.out_c[b * T * HW + j] = x;
    }
  }
  __syncthreads();
  float s = 1.f;  // the true state is s * stored state
  for (int t = 1; t < p.stop; ++t) {
    for (int j = threadIdx.x; j < HW; j += blockDim.x) {
      const int h = j / W, w = j - h * W;
      const int q0 = max(0, w - p.rw), q1 = min(W - 1, w + p.rw);
      const float* g = gw + p.rw - w;  // g[q] = G_c(|q - w|)
      float ar = 0.f, ai = 0.f;
      for (int q = q0; q <= q1; ++q) {
        ar = fmaf(g[q], xr[h * W + q], ar);
        ai = fmaf(g[q], xi[h * W + q], ai);
      }
      tr[j] = ar;
      ti[j] = ai;
    }
    __syncthreads();
    float m2 = 0.f;
    const float as = p.alpha * s;
    for (int j = threadIdx.x; j < HW; j += blockDim.x) {
      const int h = j / W, w = j - h * W;
      const int p0 = max(0, h - p.rh), p1 = min(H - 1, h + p.rh);
      const float* g = gh + p.rh - h;
      float ar = 0.f, ai = 0.f;
      for (int q = p0; q <= p1; ++q) {
        ar = fmaf(g[q], tr[q * W + w], ar);
        ai = fmaf(g[q], ti[q * W + w], ai);
      }
      const float ws = om[j] * s;
      const float nr = mk[j] * (as * ar - ws * xi[j]);
      const float ni = mk[j] * (as * ai + ws * xr[j]);
      xr[j] = nr;
      xi[j] = ni;
      m2 = fmaxf(m2, nr * nr + ni * ni);
    }
    // block_reduce's barriers also order this step's writes of X before the next step's reads
    m2 = block_reduce(m2, MaxOp{});
    // 1 / sqrt as the CPU kernel (rsqrtf is 2 ulp off and scales every saved state by that)
    s = (p.renorm && m2 > 0.f) ? 1.f / sqrtf(m2) : 1.f;
    if (t >= p.start) {
      const int64_t o = (b * T + (t - p.start)) * HW;
      for (int j = threadIdx.x; j < HW; j += blockDim.x) {
        if (p.out_phase)
          p.out_phase[o + j] = phase_of(xr[j], xi[j]);
        else
          p.out_c[o + j] = c10::complex<float>(xr[j] * s, xi[j] * s);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// The cluster kernels.

constexpr int kThreadsC = 256;
constexpr int kWarpsC = kThreadsC / 32;
constexpr int kMaxCluster = 8;      // the portable cluster size limit
constexpr int kMaxFactor = 3968;    // doubles of U_r and U_c^T carried in the kernel parameters (< 32 KB)

struct RunParams {
  const c10::complex<float>* x0;
  const float* omega;
  const bool* mask;  // nullptr: every node keeps its coupling
  c10::complex<float>* out_c;
  float* out_phase;
  int H, W, start, stop;
  int C;       // blocks per image (one cluster when > 1)
  int nr_max;  // the most rows a block owns, ceil(H / C)
  float alpha;
  bool renorm;
};

struct BandParams {
  RunParams r;
  int rh, rw;
  int nt_max;  // the most rows of T a block keeps (its own rows and rh more on each side)
  int nbuf;    // T buffers: 2 (by step parity) when other blocks write them, else 1
  double sigma;
};

// Factors in the parameters (by value: no upload, nothing for a CUDA graph to go stale on).
struct LowRankParams {
  RunParams r;
  int rr, rc;  // ranks of the row (H) and column (W) factors
  int nbuf;
  double U[kMaxFactor];  // U_r [H][rr], then U_c^T [rc][W] (eigenvectors times sqrt(lambda))
};

// Rows [row_begin(k), row_begin(k + 1)) belong to block k of an image (sizes differ by at most one).
__host__ __device__ __forceinline__ int row_begin(int k, int H, int C) { return int(int64_t(k) * H / C); }

// Where block `rank`'s copy of a shared buffer is (same layout in every block of the cluster).
template <typename T>
__device__ __forceinline__ T* peer(T* local, int rank, int C) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (C > 1) return cooperative_groups::this_cluster().map_shared_rank(local, rank);
#endif
  return local;
}

// A barrier over all blocks of the image; with release / acquire semantics for shared memory, so it
// also publishes the pushes into other blocks' buffers.
__device__ __forceinline__ void image_barrier(int C) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (C > 1) {
    cooperative_groups::this_cluster().sync();
    return;
  }
#else
  if (C > 1) __trap();  // the host launches clusters on sm_90 only
#endif
  __syncthreads();
}

// Own rows of x0 (masked), omega and mask into shared memory; sample 0 is x0 as given.
__device__ void load_own_rows(const RunParams& p, int64_t b, int r0, int n_own, float* xr, float* xi, float* om,
                              float* mk) {
  const int64_t HW = int64_t(p.H) * p.W, T = p.stop - p.start;
  const int64_t src = b * HW + int64_t(r0) * p.W, dst = b * T * HW + int64_t(r0) * p.W;
  for (int j = threadIdx.x; j < n_own; j += blockDim.x) {
    const c10::complex<float> x = p.x0[src + j];
    const float m = (p.mask == nullptr || p.mask[src + j]) ? 1.f : 0.f;
    xr[j] = m * x.real();
    xi[j] = m * x.imag();
    om[j] = p.omega[src + j];
    mk[j] = m;
    if (p.start == 0) {
      if (p.out_phase)
        p.out_phase[dst + j] = phase_of(x.real(), x.imag());
      else
        p.out_c[dst + j] = x;
    }
  }
}

// Output offset of own node 0 of sample t (node j at + j).
__device__ __forceinline__ int64_t sample_offset(const RunParams& p, int64_t b, int t, int r0) {
  const int64_t HW = int64_t(p.H) * p.W;
  return (b * (p.stop - p.start) + (t - p.start)) * HW + int64_t(r0) * p.W;
}

__device__ __forceinline__ void save_node(const RunParams& p, int64_t o, float re, float im, float s) {
  if (p.out_phase)
    p.out_phase[o] = phase_of(re, im);
  else
    p.out_c[o] = c10::complex<float>(re * s, im * s);
}

// Thread 0: this block's max |X|^2 (from the per-warp maxima) into slot [par][rank] of every block.
__device__ __forceinline__ void push_max(const float* wmax, float* slots, int par, int rank, int C) {
  float m = 0.f;
  for (int k = 0; k < kWarpsC; ++k) m = fmaxf(m, wmax[k]);
  for (int d = 0; d < C; ++d) peer(slots, d, C)[par * C + rank] = m;
}

// The renormalisation scale from the image's max |X|^2 (max is exact: the same s in every block, and
// the block kernel's s). 1 / sqrt as the CPU kernel (rsqrtf is 2 ulp off).
__device__ __forceinline__ float scale_from(const float* slots, int par, int C, bool renorm) {
  float m2 = 0.f;
  for (int k = 0; k < C; ++k) m2 = fmaxf(m2, slots[par * C + k]);
  return (renorm && m2 > 0.f) ? 1.f / sqrtf(m2) : 1.f;
}

__device__ __forceinline__ void warp_max_to(float m2, float* wmax) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m2 = fmaxf(m2, __shfl_xor_sync(0xffffffffu, m2, o));
  if ((threadIdx.x & 31) == 0) wmax[threadIdx.x >> 5] = m2;
}

// One update of an own node from its coupling sum (ar, ai) = (G X)[node] (the block kernel's
// expression); the node's stored sample t - 1 is saved first when wanted. Returns |X_new|^2.
__device__ __forceinline__ float update_node(const RunParams& p, int j, float ar, float ai, float s, float as,
                                             float* xr, float* xi, const float* om, const float* mk, bool save,
                                             int64_t o) {
  const float x_r = xr[j], x_i = xi[j];
  if (save) save_node(p, o + j, x_r, x_i, s);
  const float ws = om[j] * s;
  const float nr = mk[j] * (as * ar - ws * x_i);
  const float ni = mk[j] * (as * ai + ws * x_r);
  xr[j] = nr;
  xi[j] = ni;
  return nr * nr + ni * ni;
}

// Band kernel. Shared memory (floats): xr, xi, om, mk [nr_max * W] each (own rows), T [nbuf][2][nt_max * W]
// (rows t0 .. of this block's band), gh [2 rh + 1], gw [2 rw + 1], max slots [2][C], warp maxima.
__global__ void __launch_bounds__(kThreadsC) cvrnn_band_kernel(const __grid_constant__ BandParams bp) {
  extern __shared__ __align__(16) float smem[];
  const RunParams& p = bp.r;
  const int C = p.C, rank = int(blockIdx.x % unsigned(C));
  const int64_t b = blockIdx.x / unsigned(C);
  const int H = p.H, W = p.W, rh = bp.rh, rw = bp.rw;
  const int r0 = row_begin(rank, H, C), r1 = row_begin(rank + 1, H, C), n_own = (r1 - r0) * W;
  const int t0 = max(0, r0 - rh);  // first row of T kept here
  const int own_cap = p.nr_max * W, tplane = bp.nt_max * W;
  float* xr = smem;
  float* xi = xr + own_cap;
  float* om = xi + own_cap;
  float* mk = om + own_cap;
  float* tbuf = mk + own_cap;
  float* gh = tbuf + bp.nbuf * 2 * tplane;
  float* gw = gh + 2 * rh + 1;
  float* slots = gw + 2 * rw + 1;
  float* wmax = slots + 2 * C;
  // Taps in double, rounded once to float: the CPU kernel's and the reference's float taps exactly.
  for (int k = threadIdx.x; k <= 2 * rh; k += blockDim.x) {
    const double d = double(k - rh) / double(H);
    gh[k] = float(exp(-d * d / (2.0 * bp.sigma * bp.sigma)));
  }
  for (int k = threadIdx.x; k <= 2 * rw; k += blockDim.x) {
    const double d = double(k - rw) / double(W);
    gw[k] = float(exp(-d * d / (2.0 * bp.sigma * bp.sigma)));
  }
  load_own_rows(p, b, r0, n_own, xr, xi, om, mk);
  image_barrier(C);  // every block of the cluster runs before the first push into it
  for (int t = 1; t < p.stop; ++t) {
    if (t >= 2 && threadIdx.x == 0) push_max(wmax, slots, (t - 1) & 1, rank, C);
    float* tb = tbuf + (bp.nbuf == 2 ? (t & 1) : 0) * 2 * tplane;
    // 1. rows (own rows only), each row to every block whose column filter reads it
    for (int j = threadIdx.x; j < n_own; j += blockDim.x) {
      const int i = j / W, w = j - i * W, h = r0 + i;
      const int q0 = max(0, w - rw), q1 = min(W - 1, w + rw);
      const float* g = gw + rw - w;  // g[q] = G_c(|q - w|)
      const float* sr = xr + i * W;
      const float* si = xi + i * W;
      float ar = 0.f, ai = 0.f;
      for (int q = q0; q <= q1; ++q) {
        ar = fmaf(g[q], sr[q], ar);
        ai = fmaf(g[q], si[q], ai);
      }
      for (int d = 0; d < C; ++d) {
        const int s0 = max(0, row_begin(d, H, C) - rh), s1 = min(H, row_begin(d + 1, H, C) + rh);
        if (h >= s0 && h < s1) {
          float* dst = peer(tb, d, C) + (h - s0) * W + w;
          dst[0] = ar;
          dst[tplane] = ai;
        }
      }
    }
    image_barrier(C);
    const float s = t >= 2 ? scale_from(slots, (t - 1) & 1, C, p.renorm) : 1.f;  // of sample t - 1
    const float as = p.alpha * s;
    const bool save = t - 1 >= 1 && t - 1 >= p.start;
    const int64_t o = save ? sample_offset(p, b, t - 1, r0) : 0;
    float m2 = 0.f;
    // 2. columns and the update of own rows
    for (int j = threadIdx.x; j < n_own; j += blockDim.x) {
      const int i = j / W, w = j - i * W, h = r0 + i;
      const int p0 = max(0, h - rh), p1 = min(H - 1, h + rh);
      const float* g = gh + rh - h;
      const float* tr = tb + (p0 - t0) * W + w;  // tr[(q - p0) * W] = T[q, w]
      float ar = 0.f, ai = 0.f;
      for (int q = p0; q <= p1; ++q, tr += W) {
        ar = fmaf(g[q], tr[0], ar);
        ai = fmaf(g[q], tr[tplane], ai);
      }
      m2 = fmaxf(m2, update_node(p, j, ar, ai, s, as, xr, xi, om, mk, save, o));
    }
    warp_max_to(m2, wmax);
    __syncthreads();  // X and the warp maxima before the next step's row pass and push
  }
  if (p.stop >= 2) {  // the last sample, stop - 1 >= max(1, start)
    if (threadIdx.x == 0) push_max(wmax, slots, (p.stop - 1) & 1, rank, C);
    image_barrier(C);  // also: no block exits while a peer may still write into it
    const float s = scale_from(slots, (p.stop - 1) & 1, C, p.renorm);
    const int64_t o = sample_offset(p, b, p.stop - 1, r0);
    for (int j = threadIdx.x; j < n_own; j += blockDim.x) save_node(p, o + j, xr[j], xi[j], s);
  }
}

// out[m][n] = sum_k term(m, n, k) for two planes (re, im) in double, M x N outputs over the block:
// S lanes of a warp per output (lane sub sums k = sub, sub + S, ...; then a shuffle tree), S a power
// of two chosen from M, N, K and the block size alone, so every block sums in the same order.
template <typename Term, typename Store>
__device__ __forceinline__ void reduce_products(int M, int N, int K, Term term, Store store) {
  const int MN = M * N;
  int S = 32;
  while (S > 1 && (S >> 1) >= K) S >>= 1;
  while (S > 1 && MN * S > int(blockDim.x)) S >>= 1;
  const int per_warp = 32 / S, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int base = warp * per_warp; base < MN; base += nwarps * per_warp) {  // warp-uniform trip count
    const int o = base + lane / S, sub = lane & (S - 1);
    const int m = o / N, n = o - (o / N) * N;
    double re = 0.0, im = 0.0;
    if (o < MN)
      for (int k = sub; k < K; k += S) term(m, n, k, re, im);
    for (int off = S >> 1; off > 0; off >>= 1) {
      re += __shfl_xor_sync(0xffffffffu, re, off);
      im += __shfl_xor_sync(0xffffffffu, im, off);
    }
    if (o < MN && sub == 0) store(m, n, re, im);
  }
}

// Rows of the shared U_c^T copy are W + kUcPad doubles apart: P = X U_c has 4 lanes per output
// read 4 consecutive doubles of rows q .. q + 3, which a 512-byte row stride put on the same banks
// (4-way conflicts); 4 more doubles (8 banks) per row spread them over all 32.
constexpr int kUcPad = 4;

// Low-rank kernel. Shared memory: doubles U_c^T [rc][W + kUcPad], own rows of U_r [nr_max][rr], P / E
// [2][nr_max][rc], partial Z [nbuf][C][2][rr rc], Z [2][rr rc]; then floats xr, xi, om, mk
// [nr_max * W] each, max slots [2][C], warp maxima.
__global__ void __launch_bounds__(kThreadsC) cvrnn_lowrank_kernel(const __grid_constant__ LowRankParams lp) {
  extern __shared__ __align__(16) double dsmem[];
  const RunParams& p = lp.r;
  const int C = p.C, rank = int(blockIdx.x % unsigned(C));
  const int64_t b = blockIdx.x / unsigned(C);
  const int H = p.H, W = p.W, rr = lp.rr, rc = lp.rc, rrc = rr * rc;
  const int r0 = row_begin(rank, H, C), r1 = row_begin(rank + 1, H, C), nr = r1 - r0, n_own = nr * W;
  const int nmax = p.nr_max, own_cap = nmax * W;
  const int ldu = W + kUcPad;
  double* ucT = dsmem;
  double* urO = ucT + rc * ldu;
  double* pe = urO + nmax * rr;  // P, later E; plane stride nmax * rc
  double* zb = pe + 2 * nmax * rc;
  double* z = zb + lp.nbuf * C * 2 * rrc;
  float* xr = reinterpret_cast<float*>(z + 2 * rrc);
  float* xi = xr + own_cap;
  float* om = xi + own_cap;
  float* mk = om + own_cap;
  float* slots = mk + own_cap;
  float* wmax = slots + 2 * C;
  const double* ur_g = lp.U;
  const double* ucT_g = lp.U + H * rr;
  for (int k = threadIdx.x; k < rc * W; k += blockDim.x) ucT[(k / W) * ldu + k % W] = ucT_g[k];
  for (int k = threadIdx.x; k < nr * rr; k += blockDim.x) urO[k] = ur_g[r0 * rr + k];
  load_own_rows(p, b, r0, n_own, xr, xi, om, mk);
  image_barrier(C);
  const int pim = nmax * rc;  // the imaginary plane of P / E
  for (int t = 1; t < p.stop; ++t) {
    if (t >= 2 && threadIdx.x == 0) push_max(wmax, slots, (t - 1) & 1, rank, C);
    double* zbt = zb + (lp.nbuf == 2 ? (t & 1) : 0) * C * 2 * rrc;
    // P = X_own U_c
    reduce_products(
        nr, rc, W,
        [&](int i, int q, int w, double& re, double& im) {
          const double u = ucT[q * ldu + w];
          re += u * double(xr[i * W + w]);
          im += u * double(xi[i * W + w]);
        },
        [&](int i, int q, double re, double im) {
          pe[i * rc + q] = re;
          pe[pim + i * rc + q] = im;
        });
    __syncthreads();
    // Z_rank = U_r[own]^T P, into slot `rank` of every block
    reduce_products(
        rr, rc, nr,
        [&](int a, int q, int i, double& re, double& im) {
          const double u = urO[i * rr + a];
          re += u * pe[i * rc + q];
          im += u * pe[pim + i * rc + q];
        },
        [&](int a, int q, double re, double im) {
          for (int d = 0; d < C; ++d) {
            double* dst = peer(zbt, d, C) + rank * 2 * rrc + a * rc + q;
            dst[0] = re;
            dst[rrc] = im;
          }
        });
    image_barrier(C);
    const float s = t >= 2 ? scale_from(slots, (t - 1) & 1, C, p.renorm) : 1.f;
    const float as = p.alpha * s;
    const bool save = t - 1 >= 1 && t - 1 >= p.start;
    const int64_t o = save ? sample_offset(p, b, t - 1, r0) : 0;
    // Z = sum of the partials in rank order
    for (int k = threadIdx.x; k < rrc; k += blockDim.x) {
      double re = 0.0, im = 0.0;
      for (int d = 0; d < C; ++d) {
        re += zbt[d * 2 * rrc + k];
        im += zbt[d * 2 * rrc + rrc + k];
      }
      z[k] = re;
      z[rrc + k] = im;
    }
    __syncthreads();
    // E = U_r[own] Z (over P: its last reader was before the barrier)
    reduce_products(
        nr, rc, rr,
        [&](int i, int q, int a, double& re, double& im) {
          const double u = urO[i * rr + a];
          re += u * z[a * rc + q];
          im += u * z[rrc + a * rc + q];
        },
        [&](int i, int q, double re, double im) {
          pe[i * rc + q] = re;
          pe[pim + i * rc + q] = im;
        });
    __syncthreads();
    // Y = E U_c^T, rounded to float as the CPU kernel does, and the update
    float m2 = 0.f;
    for (int j = threadIdx.x; j < n_own; j += blockDim.x) {
      const int i = j / W, w = j - i * W;
      double yr = 0.0, yi = 0.0;
      for (int q = 0; q < rc; ++q) {
        const double u = ucT[q * ldu + w];
        yr += pe[i * rc + q] * u;
        yi += pe[pim + i * rc + q] * u;
      }
      m2 = fmaxf(m2, update_node(p, j, float(yr), float(yi), s, as, xr, xi, om, mk, save, o));
    }
    warp_max_to(m2, wmax);
    __syncthreads();
  }
  if (p.stop >= 2) {
    if (threadIdx.x == 0) push_max(wmax, slots, (p.stop - 1) & 1, rank, C);
    image_barrier(C);
    const float s = scale_from(slots, (p.stop - 1) & 1, C, p.renorm);
    const int64_t o = sample_offset(p, b, p.stop - 1, r0);
    for (int j = threadIdx.x; j < n_own; j += blockDim.x) save_node(p, o + j, xr[j], xi[j], s);
  }
}

int64_t smem_limit(int dev) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return v;
}

// ---------------------------------------------------------------------------------------------------
// Host side.

// The low-rank factor of one axis, from the function the CPU kernel's axis_factor<float> calls, with
// its tolerance (eigenpairs above 1e-9 of the largest), kept in double: the same factor as the CPU's.
using AxisFactorHost = GaussianAxisFactor;

AxisFactorHost compute_axis_factor(int64_t n, double sigma) { return gaussian_axis_factor(n, sigma, 1e-9); }

// Cached per (n, sigma): an eigh per call would cost more than a short run, and a cached factor keeps
// a call inside a CUDA-graph capture free of anything but the launch.
std::shared_ptr<const AxisFactorHost> axis_factor_cached(int64_t n, double sigma) {
  static std::mutex mu;
  static std::map<std::pair<int64_t, double>, std::shared_ptr<const AxisFactorHost>> cache;
  const auto key = std::make_pair(n, sigma);
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto f = std::make_shared<const AxisFactorHost>(compute_axis_factor(n, sigma));
  std::lock_guard<std::mutex> lock(mu);
  if (cache.size() >= 256) cache.clear();
  return cache.emplace(key, f).first->second;
}

// The CPU kernel's choice of the low-rank form for complex64 (run_separable: both bands wider than
// 8 taps and fewer FMAs, counted over rows padded to 8 floats, double at half the float rate).
bool cpu_uses_low_rank(int64_t H, int64_t W, int64_t rh, int64_t rw, int64_t rr, int64_t rc) {
  const int64_t Wv = (W + 7) / 8 * 8;
  const int64_t band_cost = H * Wv * ((2 * rw + 1) + (2 * rh + 1));
  const int64_t rank_cost = (2 * rr * H * Wv + 2 * rr * rc * Wv) * 2;
  return rank_cost < band_cost;
}

enum class KernelChoice { kAuto, kBand, kBlock };

// PHASOR_CVRNN_CUDA_KERNEL, read per call: auto (default: cluster kernel, low-rank where the CPU runs
// it), band (cluster kernel, never low-rank), block (the one-block-per-image kernel).
KernelChoice kernel_choice(const char* op) {
  const char* v = std::getenv("PHASOR_CVRNN_CUDA_KERNEL");
  const std::string s = v ? v : "";
  if (s.empty() || s == "auto") return KernelChoice::kAuto;
  if (s == "band") return KernelChoice::kBand;
  if (s == "block") return KernelChoice::kBlock;
  TORCH_CHECK_VALUE(false, op, ": PHASOR_CVRNN_CUDA_KERNEL must be auto, band or block, got '", s, "'");
}

// PHASOR_CVRNN_CUDA_CLUSTER, read per call: 0 (default) chooses; 1..8 forces the blocks per image
// (capped at the image's rows; 1 on devices before sm_90).
int forced_cluster(const char* op) {
  const char* v = std::getenv("PHASOR_CVRNN_CUDA_CLUSTER");
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long c = std::strtol(v, &end, 10);
  TORCH_CHECK_VALUE(end != v && *end == '\0' && c >= 0 && c <= kMaxCluster, op,
                    ": PHASOR_CVRNN_CUDA_CLUSTER must be an integer in [0, ", kMaxCluster, "], got '", v, "'");
  return int(c);
}

// Occupancy queries cached per (device, kernel, cluster size, shared bytes): the first call of a
// shape pays them, later ones (and CUDA-graph captures after a warm-up) do not.
template <typename Kernel>
int max_active_clusters(Kernel kernel, int kernel_id, int dev, int C, int64_t bytes) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, int, int64_t>, int> cache;
  const auto key = std::make_tuple(dev, kernel_id, C, bytes);
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  int n = 0;
  if (C == 1) {
    int per_sm = 0, sms = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreadsC, size_t(bytes)));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    n = per_sm * sms;
  } else {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(unsigned(C));
    cfg.blockDim = dim3(kThreadsC);
    cfg.dynamicSmemBytes = size_t(bytes);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = unsigned(C);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cudaOccupancyMaxActiveClusters(&n, kernel, &cfg) != cudaSuccess) {
      (void)cudaGetLastError();  // a size this device cannot co-schedule: not a candidate
      n = 0;
    }
  }
  std::lock_guard<std::mutex> lock(mu);
  cache[key] = n;
  return n;
}

// Shared bytes of each kernel for C blocks per image.
int64_t band_bytes(int64_t H, int64_t W, int64_t rh, int64_t rw, int C, int* nt_max) {
  const int64_t nr_max = (H + C - 1) / C;
  int64_t nt = 0;
  for (int d = 0; d < C; ++d) {
    const int64_t s0 = std::max<int64_t>(0, row_begin(d, int(H), C) - rh);
    const int64_t s1 = std::min<int64_t>(H, row_begin(d + 1, int(H), C) + rh);
    nt = std::max(nt, s1 - s0);
  }
  *nt_max = int(nt);
  const int64_t nbuf = C > 1 ? 2 : 1;
  return (4 * nr_max * W + nbuf * 2 * nt * W + 2 * (rh + rw + 1) + 2 * C + kWarpsC) * int64_t(sizeof(float));
}

int64_t lowrank_bytes(int64_t H, int64_t W, int64_t rr, int64_t rc, int C) {
  const int64_t nr_max = (H + C - 1) / C, nbuf = C > 1 ? 2 : 1;
  const int64_t doubles = rc * (W + kUcPad) + nr_max * rr + 2 * nr_max * rc + nbuf * C * 2 * rr * rc + 2 * rr * rc;
  return doubles * int64_t(sizeof(double)) + (4 * nr_max * W + 2 * C + kWarpsC) * int64_t(sizeof(float));
}

// Launch `kernel` over B images with C blocks each (a cluster when C > 1).
template <typename Kernel, typename Params>
void launch_run(Kernel kernel, const Params& params, int64_t B, int C, int64_t bytes, cudaStream_t stream,
                const char* op) {
  if (bytes > kDefaultSmem)
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(grid_for(B * C, op, "blocks"));
  cfg.blockDim = dim3(kThreadsC);
  cfg.dynamicSmemBytes = size_t(bytes);
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  if (C > 1) {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = unsigned(C);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
  }
  const cudaError_t err = cudaLaunchKernelEx(&cfg, kernel, params);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear a non-sticky launch error before reporting it
    TORCH_CHECK(false, op, ": launching the cv-RNN kernel (", C, " blocks per image", C > 1 ? " as a cluster" : "",
                ", ", bytes, " shared bytes, ", sizeof(Params), " parameter bytes) failed: ", cudaGetErrorString(err),
                sizeof(Params) > 4096 ? " (kernel parameters over 4 KB need CUDA 12.1+ in both runtime and driver)" : "");
  }
}

// Blocks per image: among the sizes that fit (shared memory, co-scheduling, at most one per row, sm_90
// for C > 1), the one with the least estimated time ~ waves * (blocks per SM in a wave) / C; ties go to
// the smaller C (fewer barriers and pushes).
template <typename Kernel, typename Bytes>
int choose_cluster(Kernel kernel, int kernel_id, int dev, int64_t B, int64_t H, int forced, int64_t limit,
                   Bytes bytes_of) {
  int major = 0, sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  // Clusters need the kernel's sm_90 code path too: a build whose only image for this device is JIT-compiled
  // from older PTX (e.g. "8.0+PTX" on an H200) has __CUDA_ARCH__ < 900, where image_barrier traps for C > 1.
  // ptxVersion is the virtual architecture of the image that runs (what __CUDA_ARCH__ / 10 is in it).
  cudaFuncAttributes fattr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&fattr, kernel));
  const int cmax = major >= 9 && fattr.ptxVersion >= 90 ? int(std::min<int64_t>(kMaxCluster, H)) : 1;
  auto fits = [&](int C) {
    const int64_t bytes = bytes_of(C);
    if (bytes > limit) return false;
    if (bytes > kDefaultSmem)
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
    return max_active_clusters(kernel, kernel_id, dev, C, bytes) > 0;
  };
  if (forced > 0) {
    const int C = std::min(forced, cmax);
    return fits(C) ? C : 0;
  }
  int best = 0;
  double best_cost = 0;
  for (int C = 1; C <= cmax; C *= 2) {
    if (!fits(C)) continue;
    const int64_t active = max_active_clusters(kernel, kernel_id, dev, C, bytes_of(C));
    const int64_t waves = (B + active - 1) / active;
    const int64_t per_sm = (std::min(B, active) * C + sms - 1) / sms;
    const double cost = double(waves * per_sm) / C;
    if (best == 0 || cost < best_cost) best = C, best_cost = cost;
  }
  return best;
}

void fill_run_params(RunParams& r, const at::Tensor& x0, const at::Tensor& omega, const at::Tensor& mask,
                     at::Tensor& out, bool save_phase, const Dims& d, double alpha, bool renorm, int C) {
  r.x0 = x0.const_data_ptr<c10::complex<float>>();
  r.omega = omega.const_data_ptr<float>();
  r.mask = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  r.out_c = save_phase ? nullptr : out.mutable_data_ptr<c10::complex<float>>();
  r.out_phase = save_phase ? out.mutable_data_ptr<float>() : nullptr;
  r.H = int(d.H), r.W = int(d.W), r.start = int(d.start), r.stop = int(d.stop);
  r.C = C;
  r.nr_max = int((d.H + C - 1) / C);
  r.alpha = float(alpha);
  r.renorm = renorm;
}

void launch_block_kernel(const at::Tensor& x0, const at::Tensor& omega, const at::Tensor& mask, at::Tensor& out,
                         bool save_phase, const Dims& d, double alpha, double sigma, bool renorm, const char* op) {
  Params p;
  p.x0 = x0.const_data_ptr<c10::complex<float>>();
  p.omega = omega.const_data_ptr<float>();
  p.mask = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  p.out_c = save_phase ? nullptr : out.mutable_data_ptr<c10::complex<float>>();
  p.out_phase = save_phase ? out.mutable_data_ptr<float>() : nullptr;
  p.H = int(d.H), p.W = int(d.W);
  p.rh = int(band_radius(d.H, sigma, false)), p.rw = int(band_radius(d.W, sigma, false));
  p.start = int(d.start), p.stop = int(d.stop);
  p.alpha = float(alpha);
  p.renorm = renorm;
  const int64_t bytes = (6 * d.HW() + 2 * (p.rh + p.rw + 1)) * int64_t(sizeof(float));
  // the opt-in limit covers static shared memory too (block_reduce's buffer)
  cudaFuncAttributes attr{};
  C10_CUDA_CHECK(cudaFuncGetAttributes(&attr, cvrnn_run_kernel));
  const int64_t limit = smem_limit(x0.device().index()) - int64_t(attr.sharedSizeBytes);
  TORCH_CHECK(bytes <= limit, op, ": the CUDA kernel keeps one ", d.H, " x ", d.W, " image's state in shared memory (",
              bytes, " bytes), more than this device's ", limit, " bytes per block; use smaller images or the CPU");
  if (bytes > kDefaultSmem)
    C10_CUDA_CHECK(cudaFuncSetAttribute(cvrnn_run_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
  auto stream = c10::cuda::getCurrentCUDAStream();
  cvrnn_run_kernel<<<grid_for(d.B, op, "images"), kThreads, bytes, stream>>>(p, sigma);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor cvrnn_run_cuda(const at::Tensor& x0_in, const at::Tensor& omega_in, const c10::optional<at::Tensor>& mask_in,
                          double alpha, double sigma, int64_t steps, bool renorm, int64_t save_start,
                          int64_t save_stop, bool save_phase) {
  constexpr const char* op = "phasor::cvrnn_run";
  const Dims d = check_run(op, x0_in, omega_in, mask_in, alpha, sigma, steps, save_start, save_stop);
  TORCH_CHECK_TYPE(x0_in.scalar_type() == at::kComplexFloat, op,
                   ": the CUDA kernel runs complex64 only (the spec's float32 state), got x0 of dtype ",
                   x0_in.scalar_type(), "; use the CPU for complex128");
  const KernelChoice choice = kernel_choice(op);
  const int forced = forced_cluster(op);
  c10::cuda::CUDAGuard guard(x0_in.device());
  auto opts = x0_in.options().dtype(save_phase ? at::kFloat : at::kComplexFloat);
  at::Tensor out = at::empty({d.B, d.T(), d.H, d.W}, opts);
  if (d.B == 0 || d.T() == 0 || d.HW() == 0) return out;
  TORCH_CHECK_VALUE(d.H <= (1 << 15) && d.W <= (1 << 15) && d.stop <= (int64_t(1) << 30), op,
                    ": image sides and the save window must fit 32-bit indices, got ", sizes_str(x0_in.sizes()));
  auto x0 = x0_in.contiguous(), omega = omega_in.contiguous();
  at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
  if (choice == KernelChoice::kBlock) {
    launch_block_kernel(x0, omega, mask, out, save_phase, d, alpha, sigma, renorm, op);
    return out;
  }
  const int dev = x0.device().index();
  const int64_t limit = smem_limit(dev);  // the cluster kernels have no static shared memory
  const int64_t H = d.H, W = d.W;
  const int64_t rh = band_radius(H, sigma, false), rw = band_radius(W, sigma, false);
  auto stream = c10::cuda::getCurrentCUDAStream();
  // The low-rank form where the CPU kernel uses it (same factors: results as the CPU's up to the order
  // of double sums), if the factors fit the kernel parameters.
  if (choice == KernelChoice::kAuto && 2 * rh + 1 > 8 && 2 * rw + 1 > 8) {
    const auto fr = axis_factor_cached(H, sigma), fc = axis_factor_cached(W, sigma);
    if (cpu_uses_low_rank(H, W, rh, rw, fr->r, fc->r) && fr->r * H + fc->r * W <= kMaxFactor) {
      auto bytes_of = [&](int C) { return lowrank_bytes(H, W, fr->r, fc->r, C); };
      const int C = choose_cluster(cvrnn_lowrank_kernel, 1, dev, d.B, H, forced, limit, bytes_of);
      if (C > 0) {
        auto lp = std::make_unique<LowRankParams>();
        fill_run_params(lp->r, x0, omega, mask, out, save_phase, d, alpha, renorm, C);
        lp->rr = int(fr->r), lp->rc = int(fc->r);
        lp->nbuf = C > 1 ? 2 : 1;
        std::memcpy(lp->U, fr->U.data(), fr->U.size() * sizeof(double));
        double* ucT = lp->U + H * fr->r;
        for (int64_t q = 0; q < fc->r; ++q)
          for (int64_t w = 0; w < W; ++w) ucT[q * W + w] = fc->U[w * fc->r + q];
        launch_run(cvrnn_lowrank_kernel, *lp, d.B, C, bytes_of(C), stream, op);
        return out;
      }
    }
  }
  auto bytes_of = [&](int C) {
    int nt = 0;
    return band_bytes(H, W, rh, rw, C, &nt);
  };
  const int C = choose_cluster(cvrnn_band_kernel, 0, dev, d.B, H, forced, limit, bytes_of);
  TORCH_CHECK(C > 0, op, ": the CUDA kernel keeps one ", d.H, " x ", d.W, " image's state in shared memory (",
              bytes_of(1), " bytes in one block, ", bytes_of(int(std::min<int64_t>(kMaxCluster, H))),
              " per block split over a cluster), more than this device's ", limit,
              " bytes per block; use smaller images or the CPU");
  BandParams bp;
  fill_run_params(bp.r, x0, omega, mask, out, save_phase, d, alpha, renorm, C);
  bp.rh = int(rh), bp.rw = int(rw);
  const int64_t bytes = band_bytes(H, W, rh, rw, C, &bp.nt_max);
  bp.nbuf = C > 1 ? 2 : 1;
  bp.sigma = sigma;
  launch_run(cvrnn_band_kernel, bp, d.B, C, bytes, stream, op);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CUDA, m) { m.impl("cvrnn_run", &cvrnn_run_cuda); }

}  // namespace phasor::cvrnn
