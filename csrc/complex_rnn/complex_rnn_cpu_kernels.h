// CPU kernels of the cv-RNN recurrence (separable Gaussian sheet and dense coupling), forward only.
// Compiled once per instruction set (complex_rnn_cpu_{base,avx2,avx512}.cpp define PHASOR_CPU_ISA).
//
// Images are independent, so threads split the batch (at::parallel_for) and each runs the whole
// S-step run for its images with the state in per-thread buffers that stay in L1/L2. The complex
// state is kept as split real / imaginary planes (the coupling is real), and each step is
//   1. rows:    T = (m X) G_c^T   -- per row, a 1-D Gaussian filter along the contiguous axis,
//   2. columns: Y = G_r T         -- the same filter across rows (a stride of one padded row),
//   3. update:  X <- m (i omega X + alpha Y), with the running max |X|^2 for the renormalisation.
// Both filters are `filter_block`: a block of output vectors accumulated in registers over the taps
// (GCC vector extensions of common/cpu_vec.h); along
// rows one vector of 4 rows (so a block's tap range stays within W + L - 1), across rows 4 vectors
// of one row (with the exact range of real rows). Only
// taps above 1e-20 (double) / 1e-12 (float) of the centre are kept (complex_rnn.h: band_radius), so
// layer 2's local coupling costs a stencil. Layer 1's near-global coupling, a smooth Gaussian of
// low numerical rank, runs in low-rank form instead where that is cheaper (AxisFactor).
// Zero padding (the sheet has no wrap) is stored: rw zero columns each side of a state row, rh zero
// rows above and below T.
// The per-image renormalisation (divide by max |X|) is deferred: the stored state is X / s, and the
// next update multiplies its coefficients by s (the recurrence is linear), so it costs no pass.
#include "complex_rnn/complex_rnn_cpu_entry.h"

#include "common/cpu_math.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/complex.h>

#include <cmath>
#include <cstring>
#include <vector>

#ifndef PHASOR_CPU_ISA
#error "define PHASOR_CPU_ISA (the namespace of this instruction-set variant) before including"
#endif

// The base build passes 32-byte vectors between inline helpers in two SSE halves; GCC warns that
// this differs from the AVX calling convention, which no caller outside this file ever sees.
#pragma GCC diagnostic ignored "-Wpsabi"

// 32-byte vectors in every build: along rows a block's tap range grows with the vector width, and
// 64-byte vectors measured 1.4-2.6x slower in the avx512 build.
#define PHASOR_VEC_BYTES 32
#include "common/cpu_vec.h"

namespace phasor::cvrnn::PHASOR_CPU_ISA {
namespace {

using cpu_vec::kLanes;
using cpu_vec::loadu;
using cpu_vec::splat;
using cpu_vec::storeu;
using cpu_vec::Vec;

// out[r * ostride + v*L ..] = sum_{k0 <= k < k1} g[k] * src[r * rstride + k * tstride + v*L ..] for R rows
// of NV vectors, real and imaginary planes at once (2 * R * NV independent accumulator chains, enough
// to cover the FMA latency). Taps outside [k0, k1) would only read zero padding for the whole block.
template <typename T, int R, int NV>
inline void filter_block(const T* sr, const T* si, int64_t tstride, int64_t rstride, const T* g, int64_t k0,
                         int64_t k1, T* outr, T* outi, int64_t ostride) {
  constexpr int64_t L = kLanes<T>;
  Vec<T> ar[R][NV], ai[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) ar[r][v] = ai[r][v] = Vec<T>{};
  for (int64_t k = k0; k < k1; ++k) {
    const Vec<T> gk = splat(g[k]);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const T* pr = sr + r * rstride + k * tstride;
      const T* pi = si + r * rstride + k * tstride;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        ar[r][v] += gk * loadu(pr + v * L);
        ai[r][v] += gk * loadu(pi + v * L);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      storeu(outr + r * ostride + v * L, ar[r][v]);
      storeu(outi + r * ostride + v * L, ai[r][v]);
    }
}

// Across rows: output row h of width Wv (a multiple of L) from the rows h + k of src (row stride Wv),
// taps [k0, k1) (the caller's exact range: the rows that are not zero padding), 4 vectors then 1.
template <typename T>
inline void filter_across_rows(const T* sr, const T* si, int64_t Wv, const T* g, int64_t k0, int64_t k1, T* outr,
                               T* outi) {
  constexpr int64_t L = kLanes<T>;
  int64_t w = 0;
  for (; w + 4 * L <= Wv; w += 4 * L) filter_block<T, 1, 4>(sr + w, si + w, Wv, 0, g, k0, k1, outr + w, outi + w, 0);
  for (; w < Wv; w += L) filter_block<T, 1, 1>(sr + w, si + w, Wv, 0, g, k0, k1, outr + w, outi + w, 0);
}

// Along rows: for H rows of the padded state (row stride Wp, value of column w at w + r), the 1-D
// filter of radius r into out (row stride Wv). One vector of L outputs at a time, for 4 rows at
// once: the taps that meet a real column for some lane, 0 <= w + k - r < W, are at most W + L - 1
// (a wider block of outputs would widen that range, which for layer 1's full band doubles the work).
template <typename T>
inline void filter_along_rows(const T* sr, const T* si, int64_t H, int64_t Wp, const T* g, int64_t r, int64_t W,
                              int64_t Wv, T* outr, T* outi) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t w = 0; w < Wv; w += L) {
    const int64_t lo = r - (w + L - 1), hi = r + W - w;
    const int64_t k0 = lo > 0 ? lo : 0, k1 = hi < 2 * r + 1 ? hi : 2 * r + 1;
    int64_t h = 0;
    for (; h + 4 <= H; h += 4)
      filter_block<T, 4, 1>(sr + h * Wp + w, si + h * Wp + w, 1, Wp, g, k0, k1, outr + h * Wv + w, outi + h * Wv + w,
                            Wv);
    for (; h < H; ++h)
      filter_block<T, 1, 1>(sr + h * Wp + w, si + h * Wp + w, 1, Wp, g, k0, k1, outr + h * Wv + w, outi + h * Wv + w,
                            Wv);
  }
}

// X <- m (i omega X + alpha Y) * s over n nodes (x*: the stored state, updated in place);
// returns max |X|^2 of the result. Nodes with m = 0 (masked, or padding lanes) become exactly 0.
template <typename T>
inline T update_nodes(T* xr, T* xi, const T* yr, const T* yi, const T* om, const T* mk, int64_t n, T alpha_s,
                      T s) {
  T m2 = 0;
#pragma omp simd reduction(max : m2)
  for (int64_t j = 0; j < n; ++j) {
    const T ws = om[j] * s;
    const T nr = mk[j] * (alpha_s * yr[j] - ws * xi[j]);
    const T ni = mk[j] * (alpha_s * yi[j] + ws * xr[j]);
    xr[j] = nr;
    xi[j] = ni;
    const T a = nr * nr + ni * ni;
    m2 = a > m2 ? a : m2;
  }
  return m2;
}

// Phase as torch.angle, but 0 at exactly-zero nodes (masked ones), whatever the signs of the zeros.
template <typename T>
inline T phase_of(T re, T im) {
  return (re == T(0) && im == T(0)) ? T(0) : std::atan2(im, re);
}

// The same for the saved window's rows: float through the vectorisable atan2_poly (within 1 ulp of
// the correctly rounded float; a scalar atan2f per node took longer than the run's steps), double
// through the library's atan2.
template <typename T>
inline T row_phase(T re, T im) {
  if constexpr (sizeof(T) == 4)
    return static_cast<T>(atan2_poly(im, re));
  else
    return phase_of(re, im);
}

// Where the saved window goes: [T, H, W] of one image, complex or phase.
template <typename T>
struct SaveTarget {
  c10::complex<T>* cplx = nullptr;  // save_phase == false
  T* phase = nullptr;               // save_phase == true
  int64_t start = 0, stop = 0, HW = 0;
  bool wants(int64_t t) const { return t >= start && t < stop; }
  // sample t from split planes with row stride `stride` (value of node (h, w) at h * stride + w), scaled by s
  void store(int64_t t, const T* xr, const T* xi, int64_t H, int64_t W, int64_t stride, T s) const {
    const int64_t o = (t - start) * HW;
    for (int64_t h = 0; h < H; ++h) {
      const T* re = xr + h * stride;
      const T* im = xi + h * stride;
      if (phase) {
        T* dst = phase + o + h * W;
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) dst[w] = row_phase(re[w], im[w]);
      } else {
        T* dst = reinterpret_cast<T*>(cplx + o + h * W);  // interleaved (re, im): c10::complex's layout
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) {
          dst[2 * w] = re[w] * s;
          dst[2 * w + 1] = im[w] * s;
        }
      }
    }
  }
};

// Per-image node data copied into padded per-thread arrays of width Wv: omega, mask (1/0; 0 in the
// padding lanes), and the masked initial state into the stored state planes.
template <typename T>
void load_image(const c10::complex<T>* x0, const T* omega, const bool* mask, int64_t H, int64_t W, int64_t Wv,
                T* om, T* mk, T* xr, T* xi, int64_t x_stride) {
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < Wv; ++w) {
      const bool in = w < W;
      const int64_t j = h * W + w;
      const T m = (in && (mask == nullptr || mask[j])) ? T(1) : T(0);
      om[h * Wv + w] = in ? omega[j] : T(0);
      mk[h * Wv + w] = m;
      xr[h * x_stride + w] = in ? m * x0[j].real() : T(0);
      xi[h * x_stride + w] = in ? m * x0[j].imag() : T(0);
    }
}

template <typename T>
SaveTarget<T> save_target(const Dims& d, at::Tensor& out, bool save_phase, int64_t b) {
  SaveTarget<T> st;
  st.start = d.start, st.stop = d.stop, st.HW = d.HW();
  const int64_t off = b * d.T() * d.HW();
  if (save_phase)
    st.phase = out.mutable_data_ptr<T>() + off;
  else
    st.cplx = out.mutable_data_ptr<c10::complex<T>>() + off;
  return st;
}

// Sample 0 is x0 as given (unmasked), the rest are the stored states.
template <typename T>
void save_initial(const SaveTarget<T>& st, const c10::complex<T>* x0, int64_t HW) {
  for (int64_t j = 0; j < HW; ++j) {
    if (st.phase)
      st.phase[j] = phase_of(x0[j].real(), x0[j].imag());
    else
      st.cplx[j] = x0[j];
  }
}

#include "complex_rnn/complex_rnn_cpu_lowrank.h"

// The separable run of one thread's images [lo, hi).
template <typename T>
void run_separable(const Dims& d, const c10::complex<T>* x0, const T* omega, const bool* mask, double alpha,
                   double sigma, bool renorm, at::Tensor& out, bool save_phase, int64_t lo, int64_t hi) {
  constexpr int64_t L = kLanes<T>;
  const bool dbl = sizeof(T) == 8;
  const int64_t H = d.H, W = d.W, Wv = (W + L - 1) / L * L;
  const int64_t rh = band_radius(H, sigma, dbl), rw = band_radius(W, sigma, dbl);
  const int64_t Wp = Wv + 2 * rw;  // a stored state row: rw zeros, W values, zeros up to Wv + rw
  // filter taps g[k] = G(|k - r|), k = 0 .. 2r
  std::vector<T> gh(2 * rh + 1), gw(2 * rw + 1);
  for (int64_t k = 0; k <= 2 * rh; ++k) gh[k] = T(gaussian_tap(k > rh ? k - rh : rh - k, H, sigma));
  for (int64_t k = 0; k <= 2 * rw; ++k) gw[k] = T(gaussian_tap(k > rw ? k - rw : rw - k, W, sigma));
  std::vector<T> xr(H * Wp, T(0)), xi(H * Wp, T(0));                      // stored state
  std::vector<T> tr((H + 2 * rh) * Wv, T(0)), ti((H + 2 * rh) * Wv, T(0));  // row-filtered, rh zero rows around
  std::vector<T> yr(H * Wv), yi(H * Wv), om(H * Wv), mk(H * Wv);
  // The low-rank form where it is cheaper than the band (FMAs per plane and step).
  AxisFactor fr, fc;
  bool low_rank = false;
  if (2 * rh + 1 > 8 && 2 * rw + 1 > 8) {
    fr = axis_factor<T>(H, H, sigma);
    fc = axis_factor<T>(W, Wv, sigma);
    const int64_t band_cost = H * Wv * ((2 * rw + 1) + (2 * rh + 1));
    // double arithmetic runs at half the float vector rate
    const int64_t rank_cost = (2 * fr.r * H * Wv + 2 * fr.r * fc.r * Wv) * (sizeof(T) == 8 ? 1 : 2);
    low_rank = rank_cost < band_cost;
  }
  LowRankScratch lrs = low_rank ? LowRankScratch(fr, fc, Wv) : LowRankScratch();
  for (int64_t b = lo; b < hi; ++b) {
    const int64_t ib = b * d.HW();
    const auto st = save_target<T>(d, out, save_phase, b);
    load_image(x0 + ib, omega + ib, mask ? mask + ib : nullptr, H, W, Wv, om.data(), mk.data(), xr.data() + rw,
               xi.data() + rw, Wp);
    if (st.wants(0)) save_initial(st, x0 + ib, d.HW());
    T s = 1;  // the true state is s * stored state
    for (int64_t t = 1; t < d.stop; ++t) {
      if (low_rank) {
        apply_low_rank(fr, fc, xr.data() + rw, xi.data() + rw, Wp, H, Wv, lrs, yr.data(), yi.data());
      } else {
        filter_along_rows(xr.data(), xi.data(), H, Wp, gw.data(), rw, W, Wv, tr.data() + rh * Wv,
                          ti.data() + rh * Wv);
        for (int64_t h = 0; h < H; ++h) {
          // T row h + k - rh is a real row (not padding) for rh - h <= k < rh + H - h
          const int64_t k0 = rh - h > 0 ? rh - h : 0, k1 = rh + H - h < 2 * rh + 1 ? rh + H - h : 2 * rh + 1;
          filter_across_rows(tr.data() + h * Wv, ti.data() + h * Wv, Wv, gh.data(), k0, k1, yr.data() + h * Wv,
                             yi.data() + h * Wv);
        }
      }
      T m2 = 0;
      for (int64_t h = 0; h < H; ++h) {
        const T r = update_nodes(xr.data() + h * Wp + rw, xi.data() + h * Wp + rw, yr.data() + h * Wv,
                                 yi.data() + h * Wv, om.data() + h * Wv, mk.data() + h * Wv, Wv, T(alpha) * s, s);
        m2 = r > m2 ? r : m2;
      }
      s = (renorm && m2 > T(0)) ? T(1) / std::sqrt(m2) : T(1);
      if (st.wants(t)) st.store(t, xr.data() + rw, xi.data() + rw, H, W, Wp, s);
    }
  }
}

// The dense-coupling run of one thread's images: y = K (m x) as n dot products per step.
template <typename T>
void run_dense(const Dims& d, const c10::complex<T>* x0, const T* omega, const T* K, const bool* mask, bool renorm,
               at::Tensor& out, bool save_phase, int64_t lo, int64_t hi) {
  const int64_t n = d.W;
  std::vector<T> xr(n), xi(n), yr(n), yi(n), om(n), mk(n);
  for (int64_t b = lo; b < hi; ++b) {
    const int64_t ib = b * n;
    const auto st = save_target<T>(d, out, save_phase, b);
    load_image(x0 + ib, omega + ib, mask ? mask + ib : nullptr, 1, n, n, om.data(), mk.data(), xr.data(), xi.data(),
               n);
    if (st.wants(0)) save_initial(st, x0 + ib, n);
    T s = 1;
    for (int64_t t = 1; t < d.stop; ++t) {
      for (int64_t p = 0; p < n; ++p) {
        const T* row = K + p * n;
        T ar = 0, ai = 0;
#pragma omp simd reduction(+ : ar, ai)
        for (int64_t q = 0; q < n; ++q) {
          ar += row[q] * xr[q];
          ai += row[q] * xi[q];
        }
        yr[p] = ar, yi[p] = ai;
      }
      const T m2 = update_nodes(xr.data(), xi.data(), yr.data(), yi.data(), om.data(), mk.data(), n, s, s);
      s = (renorm && m2 > T(0)) ? T(1) / std::sqrt(m2) : T(1);
      if (st.wants(t)) st.store(t, xr.data(), xi.data(), 1, n, n, s);
    }
  }
}

at::Tensor empty_output(const Dims& d, const at::Tensor& x0, bool save_phase, bool dense) {
  auto opts = x0.options().dtype(save_phase ? real_dtype_of(x0.scalar_type()) : x0.scalar_type());
  return dense ? at::empty({d.B, d.T(), d.W}, opts) : at::empty({d.B, d.T(), d.H, d.W}, opts);
}

void check_cpu(const char* op, const at::Tensor& x0) {
  TORCH_CHECK_VALUE(x0.device().is_cpu(), op, ": x0 must be a CPU tensor here, got ", x0.device());
}

}  // namespace

at::Tensor cvrnn_run_cpu(const at::Tensor& x0_in, const at::Tensor& omega_in, const c10::optional<at::Tensor>& mask_in,
                         double alpha, double sigma, int64_t steps, bool renorm, int64_t save_start, int64_t save_stop,
                         bool save_phase) {
  constexpr const char* op = "phasor::cvrnn_run";
  const Dims d = check_run(op, x0_in, omega_in, mask_in, alpha, sigma, steps, save_start, save_stop);
  check_cpu(op, x0_in);
  at::Tensor out = empty_output(d, x0_in, save_phase, false);
  if (d.B == 0 || d.T() == 0 || d.HW() == 0) return out;
  auto x0 = x0_in.contiguous(), omega = omega_in.contiguous();
  at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
  const bool* mp = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  at::parallel_for(0, d.B, 1, [&](int64_t lo, int64_t hi) {
    if (x0.scalar_type() == at::kComplexDouble)
      run_separable<double>(d, x0.const_data_ptr<c10::complex<double>>(), omega.const_data_ptr<double>(), mp, alpha,
                            sigma, renorm, out, save_phase, lo, hi);
    else
      run_separable<float>(d, x0.const_data_ptr<c10::complex<float>>(), omega.const_data_ptr<float>(), mp, alpha,
                           sigma, renorm, out, save_phase, lo, hi);
  });
  return out;
}

at::Tensor cvrnn_run_dense_cpu(const at::Tensor& x0_in, const at::Tensor& omega_in, const at::Tensor& K_in,
                               const c10::optional<at::Tensor>& mask_in, int64_t steps, bool renorm,
                               int64_t save_start, int64_t save_stop, bool save_phase) {
  constexpr const char* op = "phasor::cvrnn_run_dense";
  const Dims d = check_run_dense(op, x0_in, omega_in, K_in, mask_in, steps, save_start, save_stop);
  check_cpu(op, x0_in);
  at::Tensor out = empty_output(d, x0_in, save_phase, true);
  if (d.B == 0 || d.T() == 0 || d.W == 0) return out;
  auto x0 = x0_in.contiguous(), omega = omega_in.contiguous(), K = K_in.contiguous();
  at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
  const bool* mp = mask.defined() ? mask.const_data_ptr<bool>() : nullptr;
  at::parallel_for(0, d.B, 1, [&](int64_t lo, int64_t hi) {
    if (x0.scalar_type() == at::kComplexDouble)
      run_dense<double>(d, x0.const_data_ptr<c10::complex<double>>(), omega.const_data_ptr<double>(),
                        K.const_data_ptr<double>(), mp, renorm, out, save_phase, lo, hi);
    else
      run_dense<float>(d, x0.const_data_ptr<c10::complex<float>>(), omega.const_data_ptr<float>(),
                       K.const_data_ptr<float>(), mp, renorm, out, save_phase, lo, hi);
  });
  return out;
}

}  // namespace phasor::cvrnn::PHASOR_CPU_ISA
