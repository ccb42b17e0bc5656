// CPU kernels of the rotating-layer epilogue. This header is compiled once per instruction set
// (rot_epilogue_cpu_{base,avx2}.cpp define PHASOR_CPU_ISA); rot_epilogue_cpu.cpp picks one at run
// time. The kernels of the (BatchNorm and LayerNorm variants, forward and
// backward). Math and symbols: rot_epilogue.h and spec §10.4-10.5.
//
// Layout: a "site" is one (b, c, spatial) position; its n rotation components are strided by
// C*S in psi. Sites are processed in tiles of contiguous memory so every inner loop runs over
// contiguous elements and vectorises (`omp simd`); threads come from ATen's parallel_for.
// BatchNorm groups sites by channel: work item = one (b, c) plane of S sites, two passes
// (channel statistics, then output), each recomputing the cheap per-site terms instead of
// storing them. Reductions go through per-plane (or fixed-size row-chunk) partial sums that
// are combined in a fixed order, so results do not depend on the thread count.
#include "rotating_features/rot_epilogue_args.h"
#include "rotating_features/rot_epilogue_cpu_entry.h"
#include "common/cpu_vec.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#ifndef PHASOR_CPU_ISA
#error "define PHASOR_CPU_ISA (the namespace of this instruction-set variant) before including"
#endif

namespace phasor::rot::PHASOR_CPU_ISA {
namespace {

constexpr int64_t kTile = 256;

// Pointers to one tile of sites. Component k of site j: psi[k * ks + j] (lift: only k = 0
// exists, the others are zero). Rotation bias of component k for site j: bias[k * bk + j * bj]
// with bj = 0 (BatchNorm: one channel per tile) or 1 (LayerNorm: the tile runs over channels).
template <typename T>
struct Tile {
  const T* psi;
  int64_t ks;
  const T* chi;   // unused in lift mode (chi = psi_0 there)
  const T* grad;  // grad_out, component stride gks; nullptr in forward
  int64_t gks;
  const T* bias;
  int64_t bk;
  int64_t len;
};

template <bool BVEC, typename T>
inline T bias_at(const T* bias, int64_t bk, int64_t k, int64_t j) {
  return BVEC ? bias[k * bk + j] : bias[k * bk];
}

// Per-site terms of one tile: a = |psi|, ysq = |psi + b|^2, m = 0.5 a + 0.5 chi and, with a
// gradient, gy = <grad, psi + b>. Whole vectors of sites keep their three sums in registers across
// the n components (one load per input element; accumulating in the a/ysq/gy rows instead cost
// three loads and stores more per element and made the pass L1-bound); the tail goes lane by lane.
template <typename T, bool LIFT, bool BVEC, bool WITH_G, bool WITH_Y = true>
inline void site_terms(const Tile<T>& t, int64_t n, T* a, T* ysq, T* m, T* gy) {
  namespace cv = phasor::cpu_vec;
  constexpr int64_t L = cv::kLanes<T>;
  const int64_t len = t.len, vend = len - len % L;
  // Lift without |psi + b| and the gradient: only component 0 is non-zero.
  const int64_t nk = (LIFT && !WITH_Y && !WITH_G) ? 1 : n;
  auto bias_vec = [&](int64_t k, int64_t j) {
    return BVEC ? cv::loadu(t.bias + k * t.bk + j) : cv::splat<T>(t.bias[k * t.bk]);
  };
  for (int64_t j = 0; j < vend; j += L) {
    cv::Vec<T> sa{}, sy{}, sg{};
    for (int64_t k = 0; k < nk; ++k) {
      const cv::Vec<T> x = (LIFT && k > 0) ? cv::Vec<T>{} : cv::loadu(t.psi + k * t.ks + j);
      const cv::Vec<T> y = x + bias_vec(k, j);
      if (!LIFT || k == 0) sa += x * x;
      if constexpr (WITH_Y) sy += y * y;
      if constexpr (WITH_G) sg += cv::loadu(t.grad + k * t.gks + j) * y;
    }
    cv::storeu(a + j, sa);
    if constexpr (WITH_Y) cv::storeu(ysq + j, sy);
    if constexpr (WITH_G) cv::storeu(gy + j, sg);
  }
  for (int64_t j = vend; j < len; ++j) {
    T sa = 0, sy = 0, sg = 0;
    for (int64_t k = 0; k < nk; ++k) {
      const T x = (LIFT && k > 0) ? T(0) : t.psi[k * t.ks + j];
      const T y = x + bias_at<BVEC>(t.bias, t.bk, k, j);
      if (!LIFT || k == 0) sa += x * x;
      if constexpr (WITH_Y) sy += y * y;
      if constexpr (WITH_G) sg += t.grad[k * t.gks + j] * y;
    }
    a[j] = sa;
    if constexpr (WITH_Y) ysq[j] = sy;
    if constexpr (WITH_G) gy[j] = sg;
  }
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    a[j] = std::sqrt(a[j]);
    m[j] = T(0.5) * a[j] + T(0.5) * (LIFT ? t.psi[j] : t.chi[j]);
  }
}

// max by value: std::max returns a reference, which stops GCC from vectorising loops that use it
// on locals. Same semantics (a NaN first argument propagates, as in relu).
template <typename T>
inline T vmax(T a, T b) { return a < b ? b : a; }

// out_k = (psi_k + b_k) * f, f = mhat / rho.
template <typename T, bool LIFT, bool BVEC>
inline void write_out(const Tile<T>& t, int64_t n, const T* f, T* out, int64_t oks, bool stream = false) {
  alignas(64) T staged[kTile];
  for (int64_t k = 0; k < n; ++k) {
    const T* pk = t.psi + k * t.ks;
    T* ok_out = out + k * oks;
    // streamed rows are staged in L1 first, so both paths run the same loop (same bits)
    const bool st = stream && phasor::cpu_vec::can_stream(ok_out, t.len);
    T* ok = st ? staged : ok_out;
#pragma omp simd
    for (int64_t j = 0; j < t.len; ++j) {
      const T x = (LIFT && k > 0) ? T(0) : pk[j];
      ok[j] = (x + bias_at<BVEC>(t.bias, t.bk, k, j)) * f[j];
    }
    if (st) phasor::cpu_vec::stream_copy(ok_out, staged, t.len);
  }
}

// Running (count, mean, M2) merge (Chan et al.), exact for any split of the data.
struct Moments {
  double count = 0, mean = 0, m2 = 0;
  void merge(double cb, double mb, double m2b) {
    if (cb == 0) return;
    const double c = count + cb, d = mb - mean;
    mean += d * cb / c;
    m2 += m2b + d * d * count * cb / c;
    count = c;
  }
};

// Per-site backward coefficients shared by BN and LN, for a tile (branch-free so it vectorises):
// g_psi_k = alpha * G_k + beta * y_k + gamma * psi_k, with
//   alpha = mhat / rho, beta = -mhat <G, y> / rho^3 (0 where |y| is clamped), gamma = 0.5 g_m / a
//   (0 where a = 0: vector_norm's backward).
template <typename T>
inline void site_grad_coeffs(int64_t len, const T* a, const T* ysq, const T* gy, const T* mhat,
                             const T* g_m, T* alpha, T* beta, T* gamma) {
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) {
    const T ynorm = std::sqrt(ysq[j]);
    const T inv_rho = T(1) / vmax(ynorm, T(kNormalizeEps));
    // both arms computed, then selected: conditional loads would block vectorisation
    const T beta_j = -mhat[j] * gy[j] * inv_rho * inv_rho * inv_rho;
    const T gamma_j = T(0.5) * g_m[j] / vmax(a[j], std::numeric_limits<T>::min());
    alpha[j] = mhat[j] * inv_rho;
    beta[j] = ynorm > T(kNormalizeEps) ? beta_j : T(0);
    gamma[j] = a[j] > T(0) ? gamma_j : T(0);
  }
}

// ============================== BatchNorm variant ============================================

struct BnPlan {
  int64_t B, n, C, S, npsi;  // npsi: rotation dims stored in psi (1 in lift mode)
  int64_t grain;
  bool stream;  // write the [B, n, C, S] output with streaming stores (use_streaming_stores)
};

inline BnPlan bn_plan(const Geometry& g) {
  BnPlan p{g.B, g.n, g.C, g.S, g.lift ? 1 : g.n, 1, false};
  p.grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, g.S * g.n));
  return p;
}

template <typename T>
inline Tile<T> bn_tile(const BnPlan& p, const T* psi, const T* chi, const T* grad, const T* rbias,
                       int64_t b, int64_t c, int64_t s0, int64_t len) {
  Tile<T> t;
  t.psi = psi + (b * p.npsi * p.C + c) * p.S + s0;
  t.ks = p.C * p.S;
  t.chi = chi ? chi + (b * p.C + c) * p.S + s0 : nullptr;
  t.grad = grad ? grad + (b * p.n * p.C + c) * p.S + s0 : nullptr;
  t.gks = p.C * p.S;
  t.bias = rbias + c;
  t.bk = p.C;
  t.len = len;
  return t;
}

// Channel-major schedule: one task per channel runs every pass over that channel's planes
// (b = 0..B-1) back to back, so a later pass re-reads psi, chi and grad_out from the last-level
// cache instead of DRAM (a channel's working set, B * (2n + 1) * S elements, is a few MB). The
// per-plane math and the order of every reduction are those of the plane-parallel schedule, so
// the two give bitwise-identical results; channel-major needs enough channels to feed the threads.
inline bool channel_major(const BnPlan& p) {
  constexpr int64_t kMaxChannelBytes = 8 << 20;
  const int64_t bytes = p.B * (2 * p.n + 1) * p.S * int64_t(sizeof(float));
  return p.C >= 2 * at::get_num_threads() && bytes <= kMaxChannelBytes;
}

// Runs body(c, plane_lo, plane_hi) over channels (channel-major) or body(-1, lo, hi) over plane
// ranges (plane-parallel), where a plane index is b * C + c.
template <typename Body>
void for_each_channel_or_planes(const BnPlan& p, bool by_channel, const Body& body) {
  if (by_channel) {
    at::parallel_for(0, p.C, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t c = lo; c < hi; ++c) body(c, int64_t(0), int64_t(0));
    });
  } else {
    at::parallel_for(0, p.B * p.C, p.grain, [&](int64_t lo, int64_t hi) { body(int64_t(-1), lo, hi); });
  }
}

// Moments of m over one plane (tiles merged in order).
template <typename T, bool LIFT>
inline void plane_moments(const BnPlan& p, const T* psi, const T* chi, const T* rbias, int64_t pl, T* a, T* ysq,
                          T* m, double& mean, double& m2) {
  const int64_t b = pl / p.C, c = pl % p.C;
  Moments mo;
  for (int64_t s0 = 0; s0 < p.S; s0 += kTile) {
    const int64_t len = std::min(kTile, p.S - s0);
    auto t = bn_tile<T>(p, psi, chi, nullptr, rbias, b, c, s0, len);
    site_terms<T, LIFT, false, false, /*WITH_Y=*/false>(t, p.n, a, ysq, m, nullptr);
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < len; ++j) sum += m[j];
    const T mu = sum / T(len);
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < len; ++j) sq += (m[j] - mu) * (m[j] - mu);
    mo.merge(len, mu, sq);
  }
  mean = mo.mean;
  m2 = mo.m2;
}

// Channel c's batch mean and biased variance from its per-plane moments (merged in batch order).
template <typename T>
inline void channel_stats(const BnPlan& p, const double* pm, const double* pm2, int64_t c, T* mean_out, T* var_out) {
  Moments mo;
  for (int64_t b = 0; b < p.B; ++b) mo.merge(p.S, pm[b * p.C + c], pm2[b * p.C + c]);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  mean_out[c] = T(mo.count > 0 ? mo.mean : nan);
  var_out[c] = T(mo.count > 0 ? mo.m2 / mo.count : nan);
}

// out and mag of one plane from its channel's statistics.
template <typename T, bool LIFT>
inline void plane_apply(const BnPlan& p, const T* psi, const T* chi, const T* rbias, const T* weight, const T* bias,
                        const T* mean, const T* var, double eps, int64_t pl, T* out, T* mag, T* a, T* ysq, T* m,
                        T* f) {
  const int64_t b = pl / p.C, c = pl % p.C;
  const double invstd = 1.0 / std::sqrt(double(var[c]) + eps);
  const T scale = T(double(weight[c]) * invstd);
  const T mu = mean[c], beta = bias[c];
  T* mag_pl = mag + (b * p.C + c) * p.S;
  T* out_pl = out + (b * p.n * p.C + c) * p.S;
  for (int64_t s0 = 0; s0 < p.S; s0 += kTile) {
    const int64_t len = std::min(kTile, p.S - s0);
    auto t = bn_tile<T>(p, psi, chi, nullptr, rbias, b, c, s0, len);
    site_terms<T, LIFT, false, false>(t, p.n, a, ysq, m, nullptr);
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const T mh = vmax((m[j] - mu) * scale + beta, T(0));
      mag_pl[s0 + j] = mh;
      f[j] = mh / vmax(std::sqrt(ysq[j]), T(kNormalizeEps));
    }
    write_out<T, LIFT, false>(t, p.n, f, out_pl + s0, p.C * p.S, p.stream);
  }
}

// Forward: (training) channel statistics, then out and mag.
template <typename T, bool LIFT>
void bn_forward(const BnPlan& p, bool training, const T* psi, const T* chi, const T* rbias, const T* weight,
                const T* bias, T* mean, T* var, double eps, T* out, T* mag) {
  std::vector<double> pm(training ? p.B * p.C : 0), pm2(training ? p.B * p.C : 0);
  const bool by_channel = channel_major(p);
  auto stats_planes = [&](int64_t lo, int64_t hi, int64_t step, T* a, T* ysq, T* m) {
    for (int64_t pl = lo; pl < hi; pl += step) plane_moments<T, LIFT>(p, psi, chi, rbias, pl, a, ysq, m, pm[pl], pm2[pl]);
  };
  auto apply_planes = [&](int64_t lo, int64_t hi, int64_t step, T* a, T* ysq, T* m, T* f) {
    for (int64_t pl = lo; pl < hi; pl += step)
      plane_apply<T, LIFT>(p, psi, chi, rbias, weight, bias, mean, var, eps, pl, out, mag, a, ysq, m, f);
  };
  if (training && !by_channel) {  // plane-parallel: a pass, the channel statistics, another pass
    for_each_channel_or_planes(p, false, [&](int64_t, int64_t lo, int64_t hi) {
      T a[kTile], ysq[kTile], m[kTile];
      stats_planes(lo, hi, 1, a, ysq, m);
    });
    for (int64_t c = 0; c < p.C; ++c) channel_stats(p, pm.data(), pm2.data(), c, mean, var);
  }
  for_each_channel_or_planes(p, by_channel, [&](int64_t c, int64_t lo, int64_t hi) {
    T a[kTile], ysq[kTile], m[kTile], f[kTile];
    if (c < 0) {
      apply_planes(lo, hi, 1, a, ysq, m, f);
      return phasor::cpu_vec::stream_fence();
    }
    // channel c's planes are c, c + C, ..., (B - 1) * C + c
    if (training) {
      stats_planes(c, p.B * p.C, p.C, a, ysq, m);
      channel_stats(p, pm.data(), pm2.data(), c, mean, var);
    }
    apply_planes(c, p.B * p.C, p.C, a, ysq, m, f);
    phasor::cpu_vec::stream_fence();
  });
}

inline void check_cpu_dtype(const char* op, const at::Tensor& psi) {
  TORCH_CHECK_TYPE(psi.scalar_type() == at::kFloat || psi.scalar_type() == at::kDouble, op,
                   ": the CPU kernel supports float32 and float64 psi, got ", psi.scalar_type());
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rot_bn_fwd_cpu(
    const at::Tensor& psi_in, const c10::optional<at::Tensor>& chi_in, const at::Tensor& rot_bias_in,
    const at::Tensor& weight_in, const at::Tensor& bias_in,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    bool training, double eps) {
  constexpr const char* op = "phasor::rot_bn_fwd";
  check_floating(op, "psi", psi_in);
  check_cpu_dtype(op, psi_in);
  auto A = prepare_bn_fwd(op, psi_in, chi_in, rot_bias_in, weight_in, bias_in, running_mean, running_var,
                          training, eps);
  const Geometry& g = A.g;
  auto &psi = A.psi, &chi = A.chi, &rot_bias = A.rot_bias, &weight = A.weight, &bias = A.bias;
  auto &out = A.out, &mag = A.mag, &mean = A.mean, &var = A.var;
  BnPlan p = bn_plan(g);
  p.stream = use_streaming_stores(psi.nbytes() + out.nbytes() + 2 * mag.nbytes());
  AT_DISPATCH_FLOATING_TYPES(psi.scalar_type(), "rot_bn_fwd_cpu", [&] {
    const scalar_t* chi_p = g.lift ? nullptr : chi.const_data_ptr<scalar_t>();
    auto run = [&](auto lift_tag) {
      constexpr bool L = decltype(lift_tag)::value;
      bn_forward<scalar_t, L>(p, training, psi.const_data_ptr<scalar_t>(), chi_p, rot_bias.const_data_ptr<scalar_t>(),
                              weight.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
                              mean.mutable_data_ptr<scalar_t>(), var.mutable_data_ptr<scalar_t>(), eps,
                              out.mutable_data_ptr<scalar_t>(), mag.mutable_data_ptr<scalar_t>());
    };
    if (g.lift) run(std::true_type{}); else run(std::false_type{});
  });
  return {out, mag, mean, var};
}

// Backward. Per site: g_mhat = <G, u> + g_ext, g_p = g_mhat * [p > 0];
// train: g_m = w*invstd*(g_p - mean(g_p) - xhat*mean(g_p*xhat)); eval: g_m = w*invstd*g_p.
template <typename T, bool LIFT>
struct BnBwdArgs {
  const BnPlan& p;
  const T *grad, *gmag, *psi, *chi, *rbias, *weight, *bias, *mean, *var;
  double eps;
};

// Per-tile g_p, xhat and the backward coefficients pass 2 needs (see site_grad_parts).
template <typename T, bool LIFT>
inline void bn_tile_gp(const BnBwdArgs<T, LIFT>& A, const Tile<T>& t, int64_t b, int64_t c,
                       int64_t s0, T* a, T* ysq, T* m, T* gy, T* xhat, T* gp, T* alpha, T* beta,
                       T* half_inv_a) {
  const auto& p = A.p;
  site_terms<T, LIFT, false, true>(t, p.n, a, ysq, m, gy);
  const T invstd = T(1.0 / std::sqrt(double(A.var[c]) + A.eps));
  const T mu = A.mean[c], w = A.weight[c], bb = A.bias[c];
  const T* ge = A.gmag ? A.gmag + (b * p.C + c) * p.S + s0 : nullptr;
#pragma omp simd
  for (int64_t j = 0; j < t.len; ++j) {
    const T xh = (m[j] - mu) * invstd;
    const T pre = w * xh + bb;
    const T mh = vmax(pre, T(0));
    const T ynorm = std::sqrt(ysq[j]);
    const T inv_rho = T(1) / vmax(ynorm, T(kNormalizeEps));
    const T g_mhat = gy[j] * inv_rho + (ge ? ge[j] : T(0));
    const T beta_j = -mh * gy[j] * inv_rho * inv_rho * inv_rho;
    const T hi_j = T(0.5) / vmax(a[j], std::numeric_limits<T>::min());
    xhat[j] = xh;
    gp[j] = pre > T(0) ? g_mhat : T(0);
    alpha[j] = mh * inv_rho;
    beta[j] = ynorm > T(kNormalizeEps) ? beta_j : T(0);
    half_inv_a[j] = a[j] > T(0) ? hi_j : T(0);  // gamma = g_m * half_inv_a (0 where |psi| = 0)
  }
}

// The per-site values of one plane (S sites each) that pass 1 hands to pass 2, so pass 2 is a
// single streaming loop over psi and grad_out instead of a recomputation of every site term.
template <typename T>
struct PlaneFields {
  T *gp, *xh, *al, *be, *hi;
};

// Pass 1 of one plane: its site fields, and its sums of g_p and g_p * xhat.
template <typename T, bool LIFT>
inline void bwd_plane_pass1(const BnBwdArgs<T, LIFT>& A, int64_t pl, const PlaneFields<T>& fld, double& sg,
                            double& sgx) {
  const auto& p = A.p;
  const int64_t b = pl / p.C, c = pl % p.C;
  T a[kTile], ysq[kTile], m[kTile], gy[kTile];
  sg = 0;
  sgx = 0;
  for (int64_t s0 = 0; s0 < p.S; s0 += kTile) {
    const int64_t len = std::min(kTile, p.S - s0);
    auto t = bn_tile<T>(p, A.psi, A.chi, A.grad, A.rbias, b, c, s0, len);
    T* xh = fld.xh + s0;
    T* gp = fld.gp + s0;
    bn_tile_gp(A, t, b, c, s0, a, ysq, m, gy, xh, gp, fld.al + s0, fld.be + s0, fld.hi + s0);
    T tg = 0, tgx = 0;
#pragma omp simd reduction(+ : tg, tgx)
    for (int64_t j = 0; j < len; ++j) {
      tg += gp[j];
      tgx += gp[j] * xh[j];
    }
    sg += tg;
    sgx += tgx;
  }
}

// Pass 2 of one plane: input gradients, and the plane's rotation-bias partials rb [n].
template <typename T, bool LIFT>
inline void bwd_plane_pass2(const BnBwdArgs<T, LIFT>& A, int64_t pl, const PlaneFields<T>& fld, T mg, T mgx,
                            T* g_psi, T* g_chi, double* rb) {
  const auto& p = A.p;
  const int64_t b = pl / p.C, c = pl % p.C;
  const T invstd = T(1.0 / std::sqrt(double(A.var[c]) + A.eps));
  const T wi = A.weight[c] * invstd;
  alignas(64) T ga[kTile], gm[kTile], staged[kTile];
  std::fill(rb, rb + p.n, 0.0);
  for (int64_t s0 = 0; s0 < p.S; s0 += kTile) {
    const int64_t len = std::min(kTile, p.S - s0);
    const int64_t site0 = pl * p.S + s0;
    const T *gp = fld.gp + s0, *xh = fld.xh + s0, *al = fld.al + s0, *be = fld.be + s0, *hia = fld.hi + s0;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      gm[j] = wi * (gp[j] - mg - xh[j] * mgx);
      ga[j] = hia[j] > T(0) ? gm[j] * hia[j] : T(0);  // 0 where |psi| = 0 (vector_norm's backward)
    }
    const T* grad_pl = A.grad + (b * p.n * p.C + c) * p.S + s0;
    const T* psi_pl = A.psi + (b * p.npsi * p.C + c) * p.S + s0;
    for (int64_t k = 0; k < p.n; ++k) {
      const T* Gk = grad_pl + k * p.C * p.S;
      const T bk = A.rbias[k * p.C + c];
      T acc = 0;
      if (LIFT && k > 0) {
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < len; ++j) acc += al[j] * Gk[j] + be[j] * bk;
      } else {
        const T* pk = psi_pl + k * p.C * p.S;
        T* gk_out = g_psi + (b * p.npsi * p.C + c) * p.S + k * p.C * p.S + s0;
        // streamed rows are staged in L1 first, so both paths run the same loop (same bits)
        const bool stream = A.p.stream && phasor::cpu_vec::can_stream(gk_out, len);
        T* gk = stream ? staged : gk_out;
#pragma omp simd reduction(+ : acc)
        for (int64_t j = 0; j < len; ++j) {
          const T gyk = al[j] * Gk[j] + be[j] * (pk[j] + bk);
          acc += gyk;
          // Lift: psi_0 and chi are the same tensor W(x), so their gradients add up.
          gk[j] = gyk + ga[j] * pk[j] + (LIFT ? T(0.5) * gm[j] : T(0));
        }
        if (stream) phasor::cpu_vec::stream_copy(gk_out, staged, len);
      }
      rb[k] += acc;
    }
    if (!LIFT) {
#pragma omp simd
      for (int64_t j = 0; j < len; ++j) g_chi[site0 + j] = T(0.5) * gm[j];
    }
  }
}

// Backward: pass 1 (site fields and per-plane sums), channel sums, pass 2 (input gradients).
// Plane-parallel keeps every plane's fields in one [5, B*C*S] buffer between the passes;
// channel-major (channel_major) keeps one channel's in a per-thread [5, B*S] buffer.
template <typename T, bool LIFT>
void bn_backward(const BnBwdArgs<T, LIFT>& A, bool training, T* g_psi, T* g_chi, T* g_rbias,
                 T* g_weight, T* g_bias) {
  const auto& p = A.p;
  const bool by_channel = channel_major(p);
  const int64_t nplanes = p.B * p.C;
  std::vector<double> s_gp(nplanes), s_gpx(nplanes), rb_part(p.B * p.n * p.C);
  std::vector<T> mean_gp(p.C), mean_gpx(p.C);
  const double N = double(p.B) * p.S;
  // Channel c's parameter gradients and the means pass 2 needs, from its planes' sums in batch order.
  auto channel_sums = [&](int64_t c) {
    double sg = 0, sgx = 0;
    for (int64_t b = 0; b < p.B; ++b) {
      sg += s_gp[b * p.C + c];
      sgx += s_gpx[b * p.C + c];
    }
    g_bias[c] = T(sg);
    g_weight[c] = T(sgx);
    mean_gp[c] = training ? T(N > 0 ? sg / N : 0) : T(0);
    mean_gpx[c] = training ? T(N > 0 ? sgx / N : 0) : T(0);
  };
  auto fields_at = [](T* base, int64_t stride, int64_t offset) {
    return PlaneFields<T>{base + offset, base + stride + offset, base + 2 * stride + offset,
                          base + 3 * stride + offset, base + 4 * stride + offset};
  };
  auto pass2 = [&](int64_t pl, const PlaneFields<T>& fld, std::vector<double>& rb) {
    const int64_t b = pl / p.C, c = pl % p.C;
    bwd_plane_pass2<T, LIFT>(A, pl, fld, mean_gp[c], mean_gpx[c], g_psi, g_chi, rb.data());
    for (int64_t k = 0; k < p.n; ++k) rb_part[(b * p.n + k) * p.C + c] = rb[k];
  };
  if (by_channel) {
    at::parallel_for(0, p.C, 1, [&](int64_t lo, int64_t hi) {
      const int64_t stride = p.B * p.S;
      std::unique_ptr<T[]> site(new T[5 * std::max<int64_t>(stride, 1)]);
      std::vector<double> rb(p.n);
      for (int64_t c = lo; c < hi; ++c) {
        for (int64_t b = 0; b < p.B; ++b) {
          const int64_t pl = b * p.C + c;
          bwd_plane_pass1<T, LIFT>(A, pl, fields_at(site.get(), stride, b * p.S), s_gp[pl], s_gpx[pl]);
        }
        channel_sums(c);
        for (int64_t b = 0; b < p.B; ++b) pass2(b * p.C + c, fields_at(site.get(), stride, b * p.S), rb);
      }
      phasor::cpu_vec::stream_fence();
    });
  } else {
    const int64_t stride = nplanes * p.S;
    std::unique_ptr<T[]> site(new T[5 * std::max<int64_t>(stride, 1)]);  // no zero-fill
    at::parallel_for(0, nplanes, p.grain, [&](int64_t lo, int64_t hi) {
      for (int64_t pl = lo; pl < hi; ++pl)
        bwd_plane_pass1<T, LIFT>(A, pl, fields_at(site.get(), stride, pl * p.S), s_gp[pl], s_gpx[pl]);
    });
    for (int64_t c = 0; c < p.C; ++c) channel_sums(c);
    at::parallel_for(0, nplanes, p.grain, [&](int64_t lo, int64_t hi) {
      std::vector<double> rb(p.n);
      for (int64_t pl = lo; pl < hi; ++pl) pass2(pl, fields_at(site.get(), stride, pl * p.S), rb);
      phasor::cpu_vec::stream_fence();
    });
  }
  for (int64_t k = 0; k < p.n; ++k)
    for (int64_t c = 0; c < p.C; ++c) {
      double s = 0;
      for (int64_t b = 0; b < p.B; ++b) s += rb_part[(b * p.n + k) * p.C + c];
      g_rbias[k * p.C + c] = T(s);
    }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rot_bn_bwd_cpu(
    const at::Tensor& grad_out_in, const c10::optional<at::Tensor>& grad_mag_in,
    const at::Tensor& psi_in, const c10::optional<at::Tensor>& chi_in, const at::Tensor& rot_bias_in,
    const at::Tensor& weight_in, const at::Tensor& bias_in, const at::Tensor& mean_in,
    const at::Tensor& var_in, bool training, double eps) {
  constexpr const char* op = "phasor::rot_bn_bwd";
  check_floating(op, "psi", psi_in);
  check_cpu_dtype(op, psi_in);
  auto R = prepare_bn_bwd(op, grad_out_in, grad_mag_in, psi_in, chi_in, rot_bias_in, weight_in, bias_in,
                          mean_in, var_in);
  const Geometry& g = R.g;
  auto &grad = R.grad, &gmag = R.gmag, &psi = R.psi, &chi = R.chi, &rot_bias = R.rot_bias;
  auto &weight = R.weight, &bias = R.bias, &mean = R.stat0, &var = R.stat1;
  auto &g_psi = R.g_psi, &g_chi = R.g_chi, &g_rbias = R.g_rbias, &g_weight = R.g_weight, &g_bias = R.g_bias;
  BnPlan p = bn_plan(g);
  p.stream = use_streaming_stores(grad.nbytes() + psi.nbytes() + g_psi.nbytes() + 2 * (g_chi.defined() ? g_chi.nbytes() : 0));
  AT_DISPATCH_FLOATING_TYPES(psi.scalar_type(), "rot_bn_bwd_cpu", [&] {
    auto run = [&](auto lift_tag) {
      constexpr bool L = decltype(lift_tag)::value;
      BnBwdArgs<scalar_t, L> A{p,
                               grad.const_data_ptr<scalar_t>(),
                               gmag.defined() ? gmag.const_data_ptr<scalar_t>() : nullptr,
                               psi.const_data_ptr<scalar_t>(),
                               L ? nullptr : chi.const_data_ptr<scalar_t>(),
                               rot_bias.const_data_ptr<scalar_t>(),
                               weight.const_data_ptr<scalar_t>(),
                               bias.const_data_ptr<scalar_t>(),
                               mean.const_data_ptr<scalar_t>(),
                               var.const_data_ptr<scalar_t>(),
                               eps};
      bn_backward<scalar_t, L>(A, training, g_psi.mutable_data_ptr<scalar_t>(),
                               L ? nullptr : g_chi.mutable_data_ptr<scalar_t>(),
                               g_rbias.mutable_data_ptr<scalar_t>(), g_weight.mutable_data_ptr<scalar_t>(),
                               g_bias.mutable_data_ptr<scalar_t>());
    };
    if (g.lift) run(std::true_type{}); else run(std::false_type{});
  });
  return {g_psi, g_chi, g_rbias, g_weight, g_bias};
}

// ============================== LayerNorm variant ============================================
// One row b = C sites (the channels of one sample); statistics over C. A row fits in cache, so
// each row is one task with row buffers. Parameter gradients use fixed chunks of kRowChunk rows.

constexpr int64_t kRowChunk = 8;

template <typename T>
inline Tile<T> ln_tile(const Geometry& g, const T* psi, const T* chi, const T* grad, const T* rbias,
                       int64_t b, int64_t c0, int64_t len) {
  Tile<T> t;
  t.psi = psi + b * g.n * g.C + c0;
  t.ks = g.C;
  t.chi = chi + b * g.C + c0;
  t.grad = grad ? grad + b * g.n * g.C + c0 : nullptr;
  t.gks = g.C;
  t.bias = rbias + c0;
  t.bk = g.C;
  t.len = len;
  return t;
}

template <typename T>
void ln_forward(const Geometry& g, const T* psi, const T* chi, const T* rbias, const T* weight,
                const T* bias, double eps, T* out, T* mag, T* mean_out, T* rstd_out) {
  at::parallel_for(0, g.B, 1, [&](int64_t lo, int64_t hi) {
    std::vector<T> a(g.C), ysq(g.C), m(g.C), f(g.C);
    for (int64_t b = lo; b < hi; ++b) {
      for (int64_t c0 = 0; c0 < g.C; c0 += kTile) {
        const int64_t len = std::min(kTile, g.C - c0);
        auto t = ln_tile<T>(g, psi, chi, nullptr, rbias, b, c0, len);
        site_terms<T, false, true, false>(t, g.n, &a[c0], &ysq[c0], &m[c0], nullptr);
      }
      double sum = 0;
      for (int64_t c = 0; c < g.C; ++c) sum += m[c];
      const double mu = g.C ? sum / g.C : 0;
      double m2 = 0;
      for (int64_t c = 0; c < g.C; ++c) m2 += (m[c] - mu) * (m[c] - mu);
      const double rstd = 1.0 / std::sqrt((g.C ? m2 / g.C : 0) + eps);
      mean_out[b] = T(mu);
      rstd_out[b] = T(rstd);
      T* mag_row = mag + b * g.C;
      for (int64_t c = 0; c < g.C; ++c) {
        const T mh = vmax(T((m[c] - mu) * rstd) * weight[c] + bias[c], T(0));
        mag_row[c] = mh;
        f[c] = mh / vmax(std::sqrt(ysq[c]), T(kNormalizeEps));
      }
      for (int64_t c0 = 0; c0 < g.C; c0 += kTile) {
        const int64_t len = std::min(kTile, g.C - c0);
        auto t = ln_tile<T>(g, psi, chi, nullptr, rbias, b, c0, len);
        write_out<T, false, true>(t, g.n, &f[c0], out + b * g.n * g.C + c0, g.C);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rot_ln_fwd_cpu(
    const at::Tensor& psi_in, const at::Tensor& chi_in, const at::Tensor& rot_bias_in,
    const at::Tensor& weight_in, const at::Tensor& bias_in, double eps) {
  constexpr const char* op = "phasor::rot_ln_fwd";
  check_floating(op, "psi", psi_in);
  check_cpu_dtype(op, psi_in);
  auto A = prepare_ln_fwd(op, psi_in, chi_in, rot_bias_in, weight_in, bias_in, eps);
  const Geometry& g = A.g;
  auto &psi = A.psi, &chi = A.chi, &rot_bias = A.rot_bias, &weight = A.weight, &bias = A.bias;
  auto &out = A.out, &mag = A.mag, &mean = A.mean, &rstd = A.rstd;
  AT_DISPATCH_FLOATING_TYPES(psi.scalar_type(), "rot_ln_fwd_cpu", [&] {
    ln_forward<scalar_t>(g, psi.const_data_ptr<scalar_t>(), chi.const_data_ptr<scalar_t>(),
                         rot_bias.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                         bias.const_data_ptr<scalar_t>(), eps, out.mutable_data_ptr<scalar_t>(),
                         mag.mutable_data_ptr<scalar_t>(), mean.mutable_data_ptr<scalar_t>(),
                         rstd.mutable_data_ptr<scalar_t>());
  });
  return {out, mag, mean, rstd};
}

template <typename T>
void ln_backward(const Geometry& g, const T* grad, const T* gmag, const T* psi, const T* chi,
                 const T* rbias, const T* weight, const T* bias, const T* mean, const T* rstd,
                 T* g_psi, T* g_chi, T* g_rbias, T* g_weight, T* g_bias) {
  const int64_t nchunks = (g.B + kRowChunk - 1) / kRowChunk;
  // Per-chunk partials of the parameter gradients: [rot_bias (n*C) | weight (C) | bias (C)].
  const int64_t width = (g.n + 2) * g.C;
  std::vector<double> part(nchunks * width, 0.0);
  at::parallel_for(0, nchunks, 1, [&](int64_t lo, int64_t hi) {
    std::vector<T> a(g.C), ysq(g.C), m(g.C), gy(g.C), xh(g.C), gp(g.C), mh(g.C);
    std::vector<T> al(g.C), be(g.C), ga(g.C), gm(g.C);
    for (int64_t ch = lo; ch < hi; ++ch) {
      double* pt = part.data() + ch * width;
      for (int64_t b = ch * kRowChunk; b < std::min(g.B, (ch + 1) * kRowChunk); ++b) {
        for (int64_t c0 = 0; c0 < g.C; c0 += kTile) {
          const int64_t len = std::min(kTile, g.C - c0);
          auto t = ln_tile<T>(g, psi, chi, grad, rbias, b, c0, len);
          site_terms<T, false, true, true>(t, g.n, &a[c0], &ysq[c0], &m[c0], &gy[c0]);
        }
        const T mu = mean[b], rs = rstd[b];
        double s_gx = 0, s_gxx = 0;  // sums over the row of g_xhat and g_xhat * xhat
        for (int64_t c = 0; c < g.C; ++c) {
          xh[c] = (m[c] - mu) * rs;
          const T pre = xh[c] * weight[c] + bias[c];
          mh[c] = vmax(pre, T(0));
          const T inv_rho = T(1) / vmax(std::sqrt(ysq[c]), T(kNormalizeEps));
          const T g_mhat = gy[c] * inv_rho + (gmag ? gmag[b * g.C + c] : T(0));
          gp[c] = pre > T(0) ? g_mhat : T(0);
          const double gx = double(gp[c]) * weight[c];
          s_gx += gx;
          s_gxx += gx * xh[c];
          pt[g.n * g.C + c] += double(gp[c]) * xh[c];
          pt[(g.n + 1) * g.C + c] += gp[c];
        }
        const T mgx = T(g.C ? s_gx / g.C : 0), mgxx = T(g.C ? s_gxx / g.C : 0);
#pragma omp simd
        for (int64_t c = 0; c < g.C; ++c) {
          gm[c] = rs * (gp[c] * weight[c] - mgx - xh[c] * mgxx);
          g_chi[b * g.C + c] = T(0.5) * gm[c];
        }
        site_grad_coeffs<T>(g.C, a.data(), ysq.data(), gy.data(), mh.data(), gm.data(), al.data(),
                            be.data(), ga.data());
        for (int64_t k = 0; k < g.n; ++k) {
          const T* Gk = grad + (b * g.n + k) * g.C;
          const T* pk = psi + (b * g.n + k) * g.C;
          const T* bk = rbias + k * g.C;
          T* gk = g_psi + (b * g.n + k) * g.C;
          double* pr = pt + k * g.C;
#pragma omp simd
          for (int64_t c = 0; c < g.C; ++c) {
            const T gyk = al[c] * Gk[c] + be[c] * (pk[c] + bk[c]);
            pr[c] += gyk;
            gk[c] = gyk + ga[c] * pk[c];
          }
        }
      }
    }
  });
  for (int64_t i = 0; i < width; ++i) {
    double s = 0;
    for (int64_t ch = 0; ch < nchunks; ++ch) s += part[ch * width + i];
    if (i < g.n * g.C) g_rbias[i] = T(s);
    else if (i < (g.n + 1) * g.C) g_weight[i - g.n * g.C] = T(s);
    else g_bias[i - (g.n + 1) * g.C] = T(s);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rot_ln_bwd_cpu(
    const at::Tensor& grad_out_in, const c10::optional<at::Tensor>& grad_mag_in,
    const at::Tensor& psi_in, const at::Tensor& chi_in, const at::Tensor& rot_bias_in,
    const at::Tensor& weight_in, const at::Tensor& bias_in, const at::Tensor& mean_in,
    const at::Tensor& rstd_in) {
  constexpr const char* op = "phasor::rot_ln_bwd";
  check_floating(op, "psi", psi_in);
  check_cpu_dtype(op, psi_in);
  auto R = prepare_ln_bwd(op, grad_out_in, grad_mag_in, psi_in, chi_in, rot_bias_in, weight_in, bias_in,
                          mean_in, rstd_in);
  const Geometry& g = R.g;
  auto &grad = R.grad, &gmag = R.gmag, &psi = R.psi, &chi = R.chi, &rot_bias = R.rot_bias;
  auto &weight = R.weight, &bias = R.bias, &mean = R.stat0, &rstd = R.stat1;
  auto &g_psi = R.g_psi, &g_chi = R.g_chi, &g_rbias = R.g_rbias, &g_weight = R.g_weight, &g_bias = R.g_bias;
  AT_DISPATCH_FLOATING_TYPES(psi.scalar_type(), "rot_ln_bwd_cpu", [&] {
    ln_backward<scalar_t>(g, grad.const_data_ptr<scalar_t>(),
                          gmag.defined() ? gmag.const_data_ptr<scalar_t>() : nullptr,
                          psi.const_data_ptr<scalar_t>(), chi.const_data_ptr<scalar_t>(),
                          rot_bias.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(),
                          bias.const_data_ptr<scalar_t>(), mean.const_data_ptr<scalar_t>(),
                          rstd.const_data_ptr<scalar_t>(), g_psi.mutable_data_ptr<scalar_t>(),
                          g_chi.mutable_data_ptr<scalar_t>(), g_rbias.mutable_data_ptr<scalar_t>(),
                          g_weight.mutable_data_ptr<scalar_t>(), g_bias.mutable_data_ptr<scalar_t>());
  });
  return {g_psi, g_chi, g_rbias, g_weight, g_bias};
}

}  // namespace phasor::rot::PHASOR_CPU_ISA
