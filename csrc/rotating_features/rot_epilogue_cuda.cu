// CUDA kernels of the rotating-layer epilogue (BatchNorm and LayerNorm variants, forward and
// backward). Same math, outputs, dtypes and semantics as rot_epilogue_cpu.cpp; see
// rot_epilogue.h for the symbols.
//
// Storage dtypes: psi/chi/grads float32, float16, bfloat16 or float64. All arithmetic runs in
// A = float (double for float64 psi); parameters and BatchNorm statistics are stored in A as
// well (param_dtype_for), LayerNorm's mean/rstd in the parameter dtype (float32 for 16-bit psi, as the fake kernels say).
// Every reduction is a block reduction (common/cuda_utils.cuh) into per-plane / per-chunk
// partials in double, combined afterwards by one thread per output in a fixed order: results
// are deterministic and no atomics are used.
//
// BatchNorm layout: a plane (b, c) holds S contiguous sites; rotation component k of a site is
// strided by C*S. One block per plane, threads striding over its sites; the cheap per-site terms
// (|psi|, |psi + b|^2, m, <G, psi + b>) are recomputed in every pass, as on the CPU.
// LayerNorm layout: row b holds C sites (channels), component stride C. One block per row
// (forward) or per chunk of rows (backward).
#include "rotating_features/rot_epilogue_args.h"

#include "common/cuda_host.h"
#include "common/cuda_utils.cuh"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

namespace phasor::rot {
namespace {

using phasor::cuda::dispatch_dtype;
using phasor::cuda::grid_for;

using phasor::cuda::Array;
using phasor::cuda::block_reduce;
using phasor::cuda::ceil_div;
using phasor::cuda::Moments;
using phasor::cuda::moments_empty;
using phasor::cuda::moments_push;
using phasor::cuda::MomentsMerge;
using phasor::cuda::Sum;

constexpr int kThreads = 256;   // every kernel below; a multiple of 32 (block_reduce)
constexpr int kRotChunk = 8;    // rotation dims per pass of the BN backward (register partials)

// Arithmetic / parameter type for a storage type.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

__device__ __forceinline__ float dsqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dsqrt(double x) { return sqrt(x); }

// std::max(x, 0) (F.relu): NaN propagates, unlike fmaxf.
template <typename A>
__device__ __forceinline__ A relu(A x) {
  return x < A(0) ? A(0) : x;
}

// std::max(r, 1e-12) (F.normalize's clamp): NaN propagates.
template <typename A>
__device__ __forceinline__ A clamp_norm(A r) {
  return r < A(kNormalizeEps) ? A(kNormalizeEps) : r;
}

__device__ __forceinline__ double quiet_nan() { return __longlong_as_double(0x7ff8000000000000LL); }

// ------------------------------------------------------------------ per-site terms

template <typename A>
struct Site {
  A a;    // |psi| over the n rotation dims (before the bias)
  A ysq;  // |psi + rot_bias|^2
  A m;    // 0.5 |psi| + 0.5 chi
  A gy;   // <grad_out, psi + rot_bias> (backward only)
};

// Component k of the site: psi[k * ks], grad[k * gks], rot_bias[k * rbk]. LIFT: psi holds only
// component 0 (= W(x)), the others are zero, and chi = psi_0.
template <typename T, bool LIFT, bool WITH_G>
__device__ __forceinline__ Site<acc_t<T>> site_terms(const T* psi, int64_t ks, const T* chi,
                                                     const T* grad, int64_t gks,
                                                     const acc_t<T>* rb, int64_t rbk, int64_t n) {
  using A = acc_t<T>;
  A x0 = A(0);
  if constexpr (LIFT) x0 = static_cast<A>(psi[0]);
  A a2 = A(0), ysq = A(0), gy = A(0);
  for (int64_t k = 0; k < n; ++k) {
    A x;
    if constexpr (LIFT) {
      x = k == 0 ? x0 : A(0);
    } else {
      x = static_cast<A>(psi[k * ks]);
    }
    const A y = x + rb[k * rbk];
    a2 += x * x;
    ysq += y * y;
    if constexpr (WITH_G) gy += static_cast<A>(grad[k * gks]) * y;
  }
  Site<A> t;
  t.a = dsqrt(a2);
  A c;
  if constexpr (LIFT) {
    c = x0;
  } else {
    c = static_cast<A>(*chi);
  }
  t.m = A(0.5) * t.a + A(0.5) * c;
  t.ysq = ysq;
  t.gy = gy;
  return t;
}

// Component k of psi as a value (zero beyond component 0 in lift mode).
template <typename T, bool LIFT>
__device__ __forceinline__ acc_t<T> psi_comp(const T* psi, int64_t ks, int64_t k) {
  using A = acc_t<T>;
  if constexpr (LIFT) {
    return k == 0 ? static_cast<A>(psi[0]) : A(0);
  } else {
    return static_cast<A>(psi[k * ks]);
  }
}

// Backward quantities through the norm and the ReLU:
// xhat = (m - mu) * rs, pre = w * xhat + bb, mhat = relu(pre),
// g_p = [pre > 0] * (<G, u> + g_ext), u = (psi + b) / max(|psi + b|, 1e-12).
template <typename A>
struct SiteGp {
  A xh, mhat, gp;
};

template <typename A>
__device__ __forceinline__ SiteGp<A> site_gp(const Site<A>& t, A mu, A rs, A w, A bb, A gext) {
  SiteGp<A> r;
  r.xh = (t.m - mu) * rs;
  const A pre = w * r.xh + bb;
  const A inv_rho = A(1) / clamp_norm(dsqrt(t.ysq));
  const A g_mhat = t.gy * inv_rho + gext;
  r.mhat = relu(pre);
  r.gp = pre > A(0) ? g_mhat : A(0);
  return r;
}

// g_psi_k = alpha * G_k + beta * y_k + gamma * psi_k (y = psi + b), g_chi = 0.5 * g_m.
// Follows F.normalize's clamp (no gradient through the clamped norm: beta = 0 there) and
// vector_norm's zero gradient at 0 (gamma = 0 there), exactly as site_grad_coeffs in the CPU
// kernels; a NaN norm propagates (inv_rho = NaN), as it does there and in the reference.
template <typename A>
struct SiteGrad {
  A alpha, beta, gamma;
};

template <typename A>
__device__ __forceinline__ SiteGrad<A> site_grad(A a, A ysq, A gy, A mhat, A g_m) {
  const A ynorm = dsqrt(ysq);
  const A inv_rho = A(1) / clamp_norm(ynorm);
  SiteGrad<A> s;
  s.alpha = mhat * inv_rho;
  s.beta = ynorm > A(kNormalizeEps) ? -mhat * gy * inv_rho * inv_rho * inv_rho : A(0);
  s.gamma = a > A(0) ? A(0.5) * g_m / a : A(0);
  return s;
}

// ------------------------------------------------------------------ BatchNorm kernels

template <typename T>
struct BnView {
  const T* psi;            // [B, npsi, C, S]
  const T* chi;            // [B, C, S]; nullptr in lift mode
  const acc_t<T>* rbias;   // [n, C]
  int64_t B, n, C, S, npsi;
};

// Training forward, pass 1: per-plane (mean, M2) of m. Grid: B*C blocks.
template <typename T, bool LIFT>
__global__ void __launch_bounds__(kThreads)
bn_fwd_stats_kernel(const BnView<T> v, double* __restrict__ part_mean, double* __restrict__ part_m2) {
  const int64_t pl = blockIdx.x;
  const int64_t b = pl / v.C, c = pl % v.C;
  const int64_t ks = v.C * v.S;
  const T* psi = v.psi + (b * v.npsi * v.C + c) * v.S;
  const T* chi = LIFT ? nullptr : v.chi + pl * v.S;
  Moments mo = moments_empty();
  for (int64_t s = threadIdx.x; s < v.S; s += blockDim.x) {
    const auto t = site_terms<T, LIFT, false>(psi + s, ks, LIFT ? nullptr : chi + s, nullptr, 0,
                                              v.rbias + c, v.C, v.n);
    moments_push(mo, static_cast<double>(t.m));
  }
  mo = block_reduce(mo, MomentsMerge{});
  if (threadIdx.x == 0) {
    part_mean[pl] = mo.mean;
    part_m2[pl] = mo.m2;
  }
}

// Training forward, pass 2: per-channel batch mean and biased variance, merging the B planes
// of S sites each in order b = 0..B-1 (Chan). NaN when there are no samples. One thread per c.
template <typename P>
__global__ void __launch_bounds__(kThreads)
bn_fwd_finalize_kernel(const double* __restrict__ part_mean, const double* __restrict__ part_m2,
                       int64_t B, int64_t C, int64_t S, P* __restrict__ mean, P* __restrict__ var) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  Moments mo = moments_empty();
  for (int64_t b = 0; b < B; ++b)
    mo = MomentsMerge{}(mo, Moments{static_cast<double>(S), part_mean[b * C + c], part_m2[b * C + c]});
  mean[c] = static_cast<P>(mo.count > 0 ? mo.mean : quiet_nan());
  var[c] = static_cast<P>(mo.count > 0 ? mo.m2 / mo.count : quiet_nan());
}

// Forward apply (the only pass in eval mode): mag = relu(BN(m)), out_k = (psi_k + b_k) * mag / rho.
// Grid: B*C blocks.
template <typename T, bool LIFT>
__global__ void __launch_bounds__(kThreads)
bn_fwd_apply_kernel(const BnView<T> v, const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ var,
                    const acc_t<T>* __restrict__ weight, const acc_t<T>* __restrict__ bias, double eps,
                    T* __restrict__ out, T* __restrict__ mag) {
  using A = acc_t<T>;
  const int64_t pl = blockIdx.x;
  const int64_t b = pl / v.C, c = pl % v.C;
  const int64_t ks = v.C * v.S;  // component stride of psi and of out
  const double invstd = 1.0 / sqrt(static_cast<double>(var[c]) + eps);
  const A scale = static_cast<A>(static_cast<double>(weight[c]) * invstd);
  const A mu = mean[c], beta = bias[c];
  const T* psi = v.psi + (b * v.npsi * v.C + c) * v.S;
  const T* chi = LIFT ? nullptr : v.chi + pl * v.S;
  T* out_pl = out + (b * v.n * v.C + c) * v.S;
  T* mag_pl = mag + pl * v.S;
  for (int64_t s = threadIdx.x; s < v.S; s += blockDim.x) {
    const auto t = site_terms<T, LIFT, false>(psi + s, ks, LIFT ? nullptr : chi + s, nullptr, 0,
                                              v.rbias + c, v.C, v.n);
    const A mh = relu((t.m - mu) * scale + beta);
    mag_pl[s] = static_cast<T>(mh);
    const A f = mh / clamp_norm(dsqrt(t.ysq));
    for (int64_t k = 0; k < v.n; ++k) {
      const A y = psi_comp<T, LIFT>(psi + s, ks, k) + v.rbias[k * v.C + c];
      out_pl[s + k * ks] = static_cast<T>(y * f);
    }
  }
}

// Backward, pass 1: per-plane sums of g_p and g_p * xhat. Grid: B*C blocks.
template <typename T, bool LIFT>
__global__ void __launch_bounds__(kThreads)
bn_bwd_sums_kernel(const BnView<T> v, const T* __restrict__ grad, const T* __restrict__ gmag,
                   const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ var,
                   const acc_t<T>* __restrict__ weight, const acc_t<T>* __restrict__ bias, double eps,
                   double* __restrict__ part_g, double* __restrict__ part_gx) {
  using A = acc_t<T>;
  const int64_t pl = blockIdx.x;
  const int64_t b = pl / v.C, c = pl % v.C;
  const int64_t ks = v.C * v.S;  // component stride of psi and of grad_out
  const A invstd = static_cast<A>(1.0 / sqrt(static_cast<double>(var[c]) + eps));
  const A mu = mean[c], w = weight[c], bb = bias[c];
  const T* psi = v.psi + (b * v.npsi * v.C + c) * v.S;
  const T* chi = LIFT ? nullptr : v.chi + pl * v.S;
  const T* g = grad + (b * v.n * v.C + c) * v.S;
  const T* ge = gmag ? gmag + pl * v.S : nullptr;
  Array<double, 2> acc{{0.0, 0.0}};
  for (int64_t s = threadIdx.x; s < v.S; s += blockDim.x) {
    const auto t = site_terms<T, LIFT, true>(psi + s, ks, LIFT ? nullptr : chi + s, g + s, ks,
                                             v.rbias + c, v.C, v.n);
    const auto q = site_gp<A>(t, mu, invstd, w, bb, ge ? static_cast<A>(ge[s]) : A(0));
    acc[0] += static_cast<double>(q.gp);
    acc[1] += static_cast<double>(q.gp) * static_cast<double>(q.xh);
  }
  acc = block_reduce(acc, Sum{});
  if (threadIdx.x == 0) {
    part_g[pl] = acc[0];
    part_gx[pl] = acc[1];
  }
}

// Backward, pass 2: g_bias = sum g_p, g_weight = sum g_p * xhat (over b in order), and the
// means coef = [sum g_p / N | sum g_p xhat / N] for the input gradients. One thread per c.
template <typename P>
__global__ void __launch_bounds__(kThreads)
bn_bwd_finalize_kernel(const double* __restrict__ part_g, const double* __restrict__ part_gx, int64_t B,
                       int64_t C, double N, P* __restrict__ g_weight, P* __restrict__ g_bias,
                       double* __restrict__ coef) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double sg = 0.0, sgx = 0.0;
  for (int64_t b = 0; b < B; ++b) {
    sg += part_g[b * C + c];
    sgx += part_gx[b * C + c];
  }
  g_bias[c] = static_cast<P>(sg);
  g_weight[c] = static_cast<P>(sgx);
  coef[c] = N > 0 ? sg / N : 0.0;
  coef[C + c] = N > 0 ? sgx / N : 0.0;
}

// Backward, pass 3: g_psi, g_chi, and per-plane partials of g_rot_bias [B, n, C].
// train: g_m = w*invstd*(g_p - mean(g_p) - xhat*mean(g_p*xhat)); eval: g_m = w*invstd*g_p.
// The rotation dims are processed kRotChunk at a time (register partials, one block reduction
// per chunk); the per-site terms are recomputed for each chunk. Grid: B*C blocks.
template <typename T, bool LIFT>
__global__ void __launch_bounds__(kThreads)
bn_bwd_apply_kernel(const BnView<T> v, const T* __restrict__ grad, const T* __restrict__ gmag,
                    const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ var,
                    const acc_t<T>* __restrict__ weight, const acc_t<T>* __restrict__ bias, double eps,
                    const double* __restrict__ coef, bool training, T* __restrict__ g_psi,
                    T* __restrict__ g_chi, double* __restrict__ rb_part) {
  using A = acc_t<T>;
  const int64_t pl = blockIdx.x;
  const int64_t b = pl / v.C, c = pl % v.C;
  const int64_t ks = v.C * v.S;  // component stride of psi, g_psi and grad_out
  const A invstd = static_cast<A>(1.0 / sqrt(static_cast<double>(var[c]) + eps));
  const A mu = mean[c], w = weight[c], bb = bias[c];
  const A wi = w * invstd;
  const A mg = training ? static_cast<A>(coef[c]) : A(0);
  const A mgx = training ? static_cast<A>(coef[v.C + c]) : A(0);
  const T* psi = v.psi + (b * v.npsi * v.C + c) * v.S;
  const T* chi = LIFT ? nullptr : v.chi + pl * v.S;
  const T* g = grad + (b * v.n * v.C + c) * v.S;
  const T* ge = gmag ? gmag + pl * v.S : nullptr;
  T* gpsi_pl = g_psi + (b * v.npsi * v.C + c) * v.S;
  T* gchi_pl = LIFT ? nullptr : g_chi + pl * v.S;
  for (int64_t k0 = 0; k0 < v.n; k0 += kRotChunk) {  // uniform across the block
    Array<double, kRotChunk> acc;
#pragma unroll
    for (int j = 0; j < kRotChunk; ++j) acc[j] = 0.0;
    for (int64_t s = threadIdx.x; s < v.S; s += blockDim.x) {
      const auto t = site_terms<T, LIFT, true>(psi + s, ks, LIFT ? nullptr : chi + s, g + s, ks,
                                               v.rbias + c, v.C, v.n);
      const auto q = site_gp<A>(t, mu, invstd, w, bb, ge ? static_cast<A>(ge[s]) : A(0));
      const A gm = wi * (q.gp - mg - q.xh * mgx);
      const auto sg = site_grad<A>(t.a, t.ysq, t.gy, q.mhat, gm);
      if constexpr (!LIFT) {
        if (k0 == 0) gchi_pl[s] = static_cast<T>(A(0.5) * gm);
      }
#pragma unroll
      for (int j = 0; j < kRotChunk; ++j) {
        const int64_t k = k0 + j;
        if (k < v.n) {
          const A x = psi_comp<T, LIFT>(psi + s, ks, k);
          const A gyk = sg.alpha * static_cast<A>(g[s + k * ks]) + sg.beta * (x + v.rbias[k * v.C + c]);
          acc[j] += static_cast<double>(gyk);
          if (!LIFT || k == 0) {
            // Lift: psi_0 and chi are the same tensor W(x), so their gradients add up.
            const A extra = LIFT ? A(0.5) * gm : A(0);
            gpsi_pl[s + k * ks] = static_cast<T>(gyk + sg.gamma * x + extra);
          }
        }
      }
    }
    acc = block_reduce(acc, Sum{});
    if (threadIdx.x == 0) {
#pragma unroll
      for (int j = 0; j < kRotChunk; ++j) {
        const int64_t k = k0 + j;
        if (k < v.n) rb_part[(b * v.n + k) * v.C + c] = acc[j];
      }
    }
  }
}

// ------------------------------------------------------------------ shared: partial-row sums

// dst = sum over r = 0..rows-1 (in order) of part[r, :], part being [rows, width]; columns
// [0, len0) go to dst0, [len0, len0 + len1) to dst1, the rest to dst2. One thread per column.
template <typename P>
__global__ void __launch_bounds__(kThreads)
sum_rows_kernel(const double* __restrict__ part, int64_t rows, int64_t width, int64_t len0,
                P* __restrict__ dst0, int64_t len1, P* __restrict__ dst1, P* __restrict__ dst2) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= width) return;
  double s = 0.0;
  for (int64_t r = 0; r < rows; ++r) s += part[r * width + i];
  if (i < len0) {
    dst0[i] = static_cast<P>(s);
  } else if (i < len0 + len1) {
    dst1[i - len0] = static_cast<P>(s);
  } else {
    dst2[i - len0 - len1] = static_cast<P>(s);
  }
}

// ------------------------------------------------------------------ LayerNorm kernels

template <typename T>
struct LnView {
  const T* psi;            // [B, n, C]
  const T* chi;            // [B, C]
  const acc_t<T>* rbias;   // [n, C]
  int64_t B, n, C;
};

// Forward: one block per row b; row statistics of m over C, then mag and out.
template <typename T>
__global__ void __launch_bounds__(kThreads)
ln_fwd_kernel(const LnView<T> v, const acc_t<T>* __restrict__ weight, const acc_t<T>* __restrict__ bias,
              double eps, T* __restrict__ out, T* __restrict__ mag, acc_t<T>* __restrict__ mean,
              acc_t<T>* __restrict__ rstd) {
  using A = acc_t<T>;
  const int64_t b = blockIdx.x;
  const int64_t C = v.C;
  const T* psi = v.psi + b * v.n * C;
  const T* chi = v.chi + b * C;
  Moments mo = moments_empty();
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const auto t = site_terms<T, false, false>(psi + c, C, chi + c, nullptr, 0, v.rbias + c, C, v.n);
    moments_push(mo, static_cast<double>(t.m));
  }
  mo = block_reduce(mo, MomentsMerge{});
  const double mu = mo.count > 0 ? mo.mean : 0.0;
  const double var = mo.count > 0 ? mo.m2 / mo.count : 0.0;
  const double rs = 1.0 / sqrt(var + eps);
  if (threadIdx.x == 0) {
    mean[b] = static_cast<A>(mu);
    rstd[b] = static_cast<A>(rs);
  }
  T* out_row = out + b * v.n * C;
  T* mag_row = mag + b * C;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const auto t = site_terms<T, false, false>(psi + c, C, chi + c, nullptr, 0, v.rbias + c, C, v.n);
    // xhat in double from the double statistics, rounded once: the CPU kernel's order (a float mean
    // would cancel against m and lose the low bits of small xhat)
    const A xh = static_cast<A>((static_cast<double>(t.m) - mu) * rs);
    const A mh = relu(xh * weight[c] + bias[c]);
    mag_row[c] = static_cast<T>(mh);
    const A f = mh / clamp_norm(dsqrt(t.ysq));
    for (int64_t k = 0; k < v.n; ++k) {
      const A y = static_cast<A>(psi[k * C + c]) + v.rbias[k * C + c];
      out_row[k * C + c] = static_cast<T>(y * f);
    }
  }
}

// Backward: one block per chunk of rows [r0, r1). Per row: pass 1 gives the row sums of
// g_xhat = g_p * w and g_xhat * xhat (block reduction); pass 2 the input gradients. The
// parameter-gradient partials of the chunk, part[chunk] = [rot_bias (n*C) | weight (C) | bias (C)],
// are accumulated in place: entry (., c) is only ever touched by the thread that owns channel c
// (c = threadIdx.x + i * blockDim.x, the same mapping in every loop), so there is no race.
template <typename T>
__global__ void __launch_bounds__(kThreads)
ln_bwd_kernel(const LnView<T> v, const T* __restrict__ grad, const T* __restrict__ gmag,
              const acc_t<T>* __restrict__ weight, const acc_t<T>* __restrict__ bias,
              const acc_t<T>* __restrict__ mean, const acc_t<T>* __restrict__ rstd, int64_t rows_per_chunk,
              T* __restrict__ g_psi, T* __restrict__ g_chi, double* __restrict__ part) {
  using A = acc_t<T>;
  const int64_t n = v.n, C = v.C;
  const int64_t width = (n + 2) * C;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * rows_per_chunk;
  const int64_t r1 = r0 + rows_per_chunk < v.B ? r0 + rows_per_chunk : v.B;
  double* pt = part + static_cast<int64_t>(blockIdx.x) * width;
  for (int64_t b = r0; b < r1; ++b) {  // uniform across the block
    const bool first = b == r0;
    const A mu = mean[b], rs = rstd[b];
    const T* psi = v.psi + b * n * C;
    const T* chi = v.chi + b * C;
    const T* g = grad + b * n * C;
    const T* ge = gmag ? gmag + b * C : nullptr;
    Array<double, 2> rsum{{0.0, 0.0}};
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const auto t = site_terms<T, false, true>(psi + c, C, chi + c, g + c, C, v.rbias + c, C, n);
      const A w = weight[c];
      const auto q = site_gp<A>(t, mu, rs, w, bias[c], ge ? static_cast<A>(ge[c]) : A(0));
      const double gx = static_cast<double>(q.gp) * static_cast<double>(w);
      rsum[0] += gx;
      rsum[1] += gx * static_cast<double>(q.xh);
      double& pw = pt[n * C + c];
      double& pb = pt[(n + 1) * C + c];
      const double dw = static_cast<double>(q.gp) * static_cast<double>(q.xh);
      const double db = static_cast<double>(q.gp);
      pw = first ? dw : pw + dw;
      pb = first ? db : pb + db;
    }
    rsum = block_reduce(rsum, Sum{});
    const A mgx = static_cast<A>(C > 0 ? rsum[0] / static_cast<double>(C) : 0.0);
    const A mgxx = static_cast<A>(C > 0 ? rsum[1] / static_cast<double>(C) : 0.0);
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      const auto t = site_terms<T, false, true>(psi + c, C, chi + c, g + c, C, v.rbias + c, C, n);
      const A w = weight[c];
      const auto q = site_gp<A>(t, mu, rs, w, bias[c], ge ? static_cast<A>(ge[c]) : A(0));
      const A gm = rs * (q.gp * w - mgx - q.xh * mgxx);
      const auto sg = site_grad<A>(t.a, t.ysq, t.gy, q.mhat, gm);
      g_chi[b * C + c] = static_cast<T>(A(0.5) * gm);
      for (int64_t k = 0; k < n; ++k) {
        const A x = static_cast<A>(psi[k * C + c]);
        const A gyk = sg.alpha * static_cast<A>(g[k * C + c]) + sg.beta * (x + v.rbias[k * C + c]);
        double& pr = pt[k * C + c];
        pr = first ? static_cast<double>(gyk) : pr + static_cast<double>(gyk);
        g_psi[b * n * C + k * C + c] = static_cast<T>(gyk + sg.gamma * x);
      }
    }
  }
}

// ------------------------------------------------------------------ host side

inline void check_cuda_dtype(const char* op, const at::Tensor& psi) {
  const auto st = psi.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, op,
                   ": the CUDA kernel supports float32, float16, bfloat16 and float64 psi, got ", st);
}


inline unsigned grid_cols(int64_t cols, const char* op) {
  return grid_for(ceil_div<int64_t>(cols, kThreads), op, "columns");
}

template <typename T>
BnView<T> bn_view(const Geometry& g, const at::Tensor& psi, const at::Tensor& chi, const at::Tensor& rot_bias) {
  return BnView<T>{psi.const_data_ptr<T>(), g.lift ? nullptr : chi.const_data_ptr<T>(),
                   rot_bias.const_data_ptr<acc_t<T>>(), g.B, g.n, g.C, g.S, g.lift ? int64_t(1) : g.n};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rot_bn_fwd_cuda(
    const at::Tensor& psi_in, const c10::optional<at::Tensor>& chi_in, const at::Tensor& rot_bias_in,
    const at::Tensor& weight_in, const at::Tensor& bias_in,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    bool training, double eps) {
  constexpr const char* op = "phasor::rot_bn_fwd";
  check_cuda_dtype(op, psi_in);
  c10::cuda::CUDAGuard guard(psi_in.device());
  auto A = prepare_bn_fwd(op, psi_in, chi_in, rot_bias_in, weight_in, bias_in, running_mean, running_var,
                          training, eps);
  const Geometry& g = A.g;
  auto &psi = A.psi, &chi = A.chi, &rot_bias = A.rot_bias, &weight = A.weight, &bias = A.bias;
  auto &out = A.out, &mag = A.mag, &mean = A.mean, &var = A.var;
  const int64_t planes = g.B * g.C;
  const bool any_sites = planes > 0 && g.S > 0;
  const unsigned plane_grid = grid_for(planes, op, "(batch, channel) planes");
  auto stream = c10::cuda::getCurrentCUDAStream();

  dispatch_dtype(psi.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    auto run = [&](auto lift_tag) {
      constexpr bool L = decltype(lift_tag)::value;
      const BnView<T> v = bn_view<T>(g, psi, chi, rot_bias);
      if (training) {
        auto part = at::empty({2, planes}, psi.options().dtype(at::kDouble));
        double* part_mean = part.mutable_data_ptr<double>();
        double* part_m2 = part_mean + planes;
        if (any_sites) {
          bn_fwd_stats_kernel<T, L><<<plane_grid, kThreads, 0, stream>>>(v, part_mean, part_m2);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
        if (g.C > 0) {
          bn_fwd_finalize_kernel<A><<<grid_cols(g.C, op), kThreads, 0, stream>>>(
              part_mean, part_m2, any_sites ? g.B : 0, g.C, g.S, mean.mutable_data_ptr<A>(),
              var.mutable_data_ptr<A>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
      if (any_sites) {
        bn_fwd_apply_kernel<T, L><<<plane_grid, kThreads, 0, stream>>>(
            v, mean.const_data_ptr<A>(), var.const_data_ptr<A>(), weight.const_data_ptr<A>(),
            bias.const_data_ptr<A>(), eps, out.mutable_data_ptr<T>(), mag.mutable_data_ptr<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    };
    if (g.lift) run(std::true_type{}); else run(std::false_type{});
  });
  return {out, mag, mean, var};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rot_bn_bwd_cuda(
    const at::Tensor& grad_out_in, const c10::optional<at::Tensor>& grad_mag_in,
    const at::Tensor& psi_in, const c10::optional<at::Tensor>& chi_in, const at::Tensor& rot_bias_in,
    const at::Tensor& weight_in, const at::Tensor& bias_in, const at::Tensor& mean_in,
    const at::Tensor& var_in, bool training, double eps) {
  constexpr const char* op = "phasor::rot_bn_bwd";
  check_cuda_dtype(op, psi_in);
  c10::cuda::CUDAGuard guard(psi_in.device());
  auto R = prepare_bn_bwd(op, grad_out_in, grad_mag_in, psi_in, chi_in, rot_bias_in, weight_in, bias_in,
                          mean_in, var_in);
  const Geometry& g = R.g;
  auto &grad = R.grad, &gmag = R.gmag, &psi = R.psi, &chi = R.chi, &rot_bias = R.rot_bias;
  auto &weight = R.weight, &bias = R.bias, &mean = R.stat0, &var = R.stat1;
  auto &g_psi = R.g_psi, &g_chi = R.g_chi, &g_rbias = R.g_rbias, &g_weight = R.g_weight, &g_bias = R.g_bias;

  const int64_t planes = g.B * g.C;
  const bool any_sites = planes > 0 && g.S > 0;
  const int64_t b_eff = any_sites ? g.B : 0;  // planes whose partials exist
  const unsigned plane_grid = grid_for(planes, op, "(batch, channel) planes");
  auto dopts = psi.options().dtype(at::kDouble);
  auto part = at::empty({2, planes}, dopts);         // [sum g_p | sum g_p * xhat] per plane
  auto coef = at::empty({2, g.C}, dopts);            // [mean g_p | mean g_p * xhat] per channel
  auto rb_part = at::empty({g.B, g.n, g.C}, dopts);  // per-plane partials of g_rot_bias
  auto stream = c10::cuda::getCurrentCUDAStream();

  dispatch_dtype(psi.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    auto run = [&](auto lift_tag) {
      constexpr bool L = decltype(lift_tag)::value;
      const BnView<T> v = bn_view<T>(g, psi, chi, rot_bias);
      const T* gmag_p = gmag.defined() ? gmag.const_data_ptr<T>() : nullptr;
      double* part_g = part.mutable_data_ptr<double>();
      double* part_gx = part_g + planes;
      if (any_sites) {
        bn_bwd_sums_kernel<T, L><<<plane_grid, kThreads, 0, stream>>>(
            v, grad.const_data_ptr<T>(), gmag_p, mean.const_data_ptr<A>(), var.const_data_ptr<A>(),
            weight.const_data_ptr<A>(), bias.const_data_ptr<A>(), eps, part_g, part_gx);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (g.C > 0) {
        bn_bwd_finalize_kernel<A><<<grid_cols(g.C, op), kThreads, 0, stream>>>(
            part_g, part_gx, b_eff, g.C, static_cast<double>(g.B) * static_cast<double>(g.S),
            g_weight.mutable_data_ptr<A>(), g_bias.mutable_data_ptr<A>(), coef.mutable_data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      if (any_sites) {
        bn_bwd_apply_kernel<T, L><<<plane_grid, kThreads, 0, stream>>>(
            v, grad.const_data_ptr<T>(), gmag_p, mean.const_data_ptr<A>(), var.const_data_ptr<A>(),
            weight.const_data_ptr<A>(), bias.const_data_ptr<A>(), eps, coef.const_data_ptr<double>(),
            training, g_psi.mutable_data_ptr<T>(), L ? nullptr : g_chi.mutable_data_ptr<T>(),
            rb_part.mutable_data_ptr<double>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      const int64_t width = g.n * g.C;
      if (width > 0) {
        A* dst = g_rbias.mutable_data_ptr<A>();
        sum_rows_kernel<A><<<grid_cols(width, op), kThreads, 0, stream>>>(
            rb_part.const_data_ptr<double>(), b_eff, width, width, dst, 0, dst, dst);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    };
    if (g.lift) run(std::true_type{}); else run(std::false_type{});
  });
  return {g_psi, g_chi, g_rbias, g_weight, g_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rot_ln_fwd_cuda(
    const at::Tensor& psi_in, const at::Tensor& chi_in, const at::Tensor& rot_bias_in,
    const at::Tensor& weight_in, const at::Tensor& bias_in, double eps) {
  constexpr const char* op = "phasor::rot_ln_fwd";
  check_cuda_dtype(op, psi_in);
  c10::cuda::CUDAGuard guard(psi_in.device());
  auto A = prepare_ln_fwd(op, psi_in, chi_in, rot_bias_in, weight_in, bias_in, eps);
  const Geometry& g = A.g;
  auto &psi = A.psi, &chi = A.chi, &rot_bias = A.rot_bias, &weight = A.weight, &bias = A.bias;
  auto &out = A.out, &mag = A.mag, &mean = A.mean, &rstd = A.rstd;
  const unsigned row_grid = grid_for(g.B, op, "rows");
  auto stream = c10::cuda::getCurrentCUDAStream();

  dispatch_dtype(psi.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    if (g.B > 0) {
      const LnView<T> v{psi.const_data_ptr<T>(), chi.const_data_ptr<T>(), rot_bias.const_data_ptr<A>(),
                        g.B, g.n, g.C};
      ln_fwd_kernel<T><<<row_grid, kThreads, 0, stream>>>(
          v, weight.const_data_ptr<A>(), bias.const_data_ptr<A>(), eps, out.mutable_data_ptr<T>(),
          mag.mutable_data_ptr<T>(), mean.mutable_data_ptr<A>(), rstd.mutable_data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {out, mag, mean, rstd};
}

// Rows per block of the LN backward: enough blocks to fill the GPU (up to 1024 chunks) while
// keeping the double partials [chunks, (n + 2) * C] within 64 MiB. Depends on shapes only, so
// results are reproducible across devices.
inline int64_t ln_rows_per_chunk(int64_t B, int64_t width) {
  if (B <= 0) return 1;
  const int64_t by_memory = std::max<int64_t>(1, (int64_t(1) << 23) / std::max<int64_t>(width, 1));
  const int64_t chunks = std::min({B, int64_t(1024), by_memory});
  return ceil_div<int64_t>(B, chunks);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rot_ln_bwd_cuda(
    const at::Tensor& grad_out_in, const c10::optional<at::Tensor>& grad_mag_in,
    const at::Tensor& psi_in, const at::Tensor& chi_in, const at::Tensor& rot_bias_in,
    const at::Tensor& weight_in, const at::Tensor& bias_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in) {
  constexpr const char* op = "phasor::rot_ln_bwd";
  check_cuda_dtype(op, psi_in);
  c10::cuda::CUDAGuard guard(psi_in.device());
  auto R = prepare_ln_bwd(op, grad_out_in, grad_mag_in, psi_in, chi_in, rot_bias_in, weight_in, bias_in,
                          mean_in, rstd_in);
  const Geometry& g = R.g;
  auto &grad = R.grad, &gmag = R.gmag, &psi = R.psi, &chi = R.chi, &rot_bias = R.rot_bias;
  auto &weight = R.weight, &bias = R.bias, &mean = R.stat0, &rstd = R.stat1;
  auto &g_psi = R.g_psi, &g_chi = R.g_chi, &g_rbias = R.g_rbias, &g_weight = R.g_weight, &g_bias = R.g_bias;

  const int64_t width = (g.n + 2) * g.C;
  const int64_t rows_per_chunk = ln_rows_per_chunk(g.B, width);
  const int64_t chunks = g.B > 0 ? ceil_div<int64_t>(g.B, rows_per_chunk) : 0;
  auto part = at::empty({chunks, width}, psi.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream();

  dispatch_dtype(psi.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const int64_t rows_with_partials = (chunks > 0 && g.C > 0) ? chunks : 0;
    if (rows_with_partials > 0) {
      const LnView<T> v{psi.const_data_ptr<T>(), chi.const_data_ptr<T>(), rot_bias.const_data_ptr<A>(),
                        g.B, g.n, g.C};
      ln_bwd_kernel<T><<<grid_for(chunks, op, "row chunks"), kThreads, 0, stream>>>(
          v, grad.const_data_ptr<T>(), gmag.defined() ? gmag.const_data_ptr<T>() : nullptr,
          weight.const_data_ptr<A>(), bias.const_data_ptr<A>(), mean.const_data_ptr<A>(),
          rstd.const_data_ptr<A>(), rows_per_chunk, g_psi.mutable_data_ptr<T>(),
          g_chi.mutable_data_ptr<T>(), part.mutable_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (width > 0) {
      sum_rows_kernel<A><<<grid_cols(width, op), kThreads, 0, stream>>>(
          part.const_data_ptr<double>(), rows_with_partials, width, g.n * g.C,
          g_rbias.mutable_data_ptr<A>(), g.C, g_weight.mutable_data_ptr<A>(), g_bias.mutable_data_ptr<A>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {g_psi, g_chi, g_rbias, g_weight, g_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CUDA, m) {
  m.impl("rot_bn_fwd", &rot_bn_fwd_cuda);
  m.impl("rot_bn_bwd", &rot_bn_bwd_cuda);
  m.impl("rot_ln_fwd", &rot_ln_fwd_cuda);
  m.impl("rot_ln_bwd", &rot_ln_bwd_cuda);
}

}  // namespace phasor::rot
