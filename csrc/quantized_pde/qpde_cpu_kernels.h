// CPU kernels of the quantized-PDE ops: fused fake quantization (forward and one-pass backward)
// and the int8 convolution with its epilogue. Compiled once per instruction set
// (qpde_cpu_{base,avx2}.cpp define PHASOR_CPU_ISA); qpde_cpu.cpp picks one at run time.
//
// Fake quantization is elementwise: threads take contiguous element ranges, inner loops are
// branch-free `omp simd` loops (torch's own formula: nearbyint(x * (1/s)) + z, clamp, - z, * s,
// so outputs equal torch.fake_quantize_* bit for bit). The backward produces grad_x and the
// scale / zero-point gradients in the same pass; the sums are taken per fixed block of elements
// (per tensor) or per (outer index, channel) row (per channel), then the partials are added in
// index order, so the result does not depend on the thread count.
//
// The int8 convolution is an implicit GEMM over blocks of 64 output pixels: the input is first
// rewritten channels-last as unsigned bytes (x + 128); each task gathers its pixels' receptive
// fields into a small column tile (one contiguous Ci-byte copy per tap, the zero point where
// padded), multiplies it with the int8 weights [Co][K] (int32 accumulation; AVX-VNNI
// vpdpbusd where the CPU has it, a widening dot product otherwise), removes the zero point with the
// weight row sums, and applies the epilogue (scale, bias, activation, requantisation) on the way out.
#include "quantized_pde/qpde_cpu_entry.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(PHASOR_QPDE_VNNI)
#include <immintrin.h>
#endif

#ifndef PHASOR_CPU_ISA
#error "define PHASOR_CPU_ISA (the namespace of this instruction-set variant) before including"
#endif

namespace phasor::qpde::PHASOR_CPU_ISA {
namespace {

constexpr int64_t kGrain = 1 << 15;       // elements per parallel task (elementwise loops)
constexpr int64_t kReduceBlock = 1 << 12;  // elements per fixed-order partial sum (per tensor)

template <typename T>
inline T clampv(T v, T lo, T hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

template <typename T>
void fq_row(const T* x, T* y, int64_t n, T s, T z, T qmin, T qmax) {
  const T inv = T(1) / s;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T q = clampv(std::nearbyint(x[i] * inv) + z, qmin, qmax);
    y[i] = (q - z) * s;
  }
}

// grad_x (straight through inside the range), and returns the row's sums of grad * d x_hat/d s
// (without the LSQ factor) and grad * d x_hat/d z.
template <typename T>
void fq_row_bwd(const T* g, const T* x, T* gx, int64_t n, T s, T z, T qmin, T qmax, double* ds_sum,
                double* dz_sum) {
  const T inv = T(1) / s;
  const T ds_lo = qmin - z, ds_hi = qmax - z;
  double ss = 0, sz = 0;
#pragma omp simd reduction(+ : ss, sz)
  for (int64_t i = 0; i < n; ++i) {
    const T q = std::nearbyint(x[i] * inv) + z;
    const bool lo = q < qmin, hi = q > qmax, out = lo || hi;
    const T xfq = (clampv(q, qmin, qmax) - z) * s;
    const T ds = lo ? ds_lo : (hi ? ds_hi : (xfq - x[i]) * inv);
    gx[i] = out ? T(0) : g[i];
    ss += static_cast<double>(g[i] * ds);
    sz += out ? static_cast<double>(-g[i] * s) : 0.0;
  }
  *ds_sum += ss;
  *dz_sum += sz;
}

// ---- int8 GEMM core: out[c * 4 + j] = sum_k w[c][k] * col[j][k] (u8 x s8 -> s32) ------------------
void dot_tile_generic(const int8_t* w, int64_t ldw, int nco, const uint8_t* col, int64_t ldc, int np,
                      int64_t K, int32_t* out) {
  for (int c = 0; c < nco; ++c)
    for (int j = 0; j < np; ++j) {
      const int8_t* a = w + c * ldw;
      const uint8_t* b = col + j * ldc;
      int32_t s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t k = 0; k < K; ++k) s += static_cast<int32_t>(a[k]) * static_cast<int32_t>(b[k]);
      out[c * 4 + j] = s;
    }
}

#if defined(PHASOR_QPDE_VNNI)
__attribute__((target("avx2,avxvnni"))) inline int32_t hsum8(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

// Full 2 x 4 tile, K a multiple of 32: 8 accumulators, 2 weight rows and one column row live.
__attribute__((target("avx2,avxvnni"))) void dot_tile_2x4_vnni(const int8_t* w, int64_t ldw, const uint8_t* col,
                                                                int64_t ldc, int64_t K, int32_t* out) {
  __m256i acc[2][4];
  for (auto& r : acc)
    for (auto& a : r) a = _mm256_setzero_si256();
  for (int64_t k = 0; k < K; k += 32) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + ldw + k));
    for (int j = 0; j < 4; ++j) {
      const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(col + j * ldc + k));
      acc[0][j] = _mm256_dpbusd_avx_epi32(acc[0][j], xv, w0);
      acc[1][j] = _mm256_dpbusd_avx_epi32(acc[1][j], xv, w1);
    }
  }
  for (int c = 0; c < 2; ++c)
    for (int j = 0; j < 4; ++j) out[c * 4 + j] = hsum8(acc[c][j]);
}

bool cpu_has_vnni() {
  static const bool has = __builtin_cpu_supports("avxvnni");
  return has;
}
#endif

inline float activate(float y, Act act) {
  if (act == Act::Relu) return y > 0.f ? y : 0.f;
  if (act == Act::Gelu) return 0.5f * y * (1.f + std::erf(y * 0.70710678118654752f));
  return y;
}

}  // namespace

// ------------------------------------------------------------------------- fake quantization
at::Tensor fq_per_tensor_cpu(const at::Tensor& x_in, double scale, double zero_point, int64_t qmin, int64_t qmax) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fake_quant_per_tensor", [&] {
    const scalar_t s = static_cast<scalar_t>(scale), z = static_cast<scalar_t>(zero_point);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
      fq_row<scalar_t>(xp + b, yp + b, e - b, s, z, scalar_t(qmin), scalar_t(qmax));
    });
  });
  return y;
}

std::tuple<at::Tensor, double, double> fq_per_tensor_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                             double scale, double zero_point, int64_t qmin,
                                                             int64_t qmax) {
  const at::Tensor x = x_in.contiguous(), g = grad_in.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options());
  const int64_t n = x.numel(), nblocks = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<double> ps(nblocks, 0.0), pz(nblocks, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fake_quant_per_tensor_bwd", [&] {
    const scalar_t s = static_cast<scalar_t>(scale), z = static_cast<scalar_t>(zero_point);
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *gp = g.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, nblocks, 4, [&](int64_t b, int64_t e) {
      for (int64_t blk = b; blk < e; ++blk) {
        const int64_t lo = blk * kReduceBlock, len = std::min(kReduceBlock, n - lo);
        fq_row_bwd<scalar_t>(gp + lo, xp + lo, gxp + lo, len, s, z, scalar_t(qmin), scalar_t(qmax), &ps[blk],
                             &pz[blk]);
      }
    });
  });
  double ss = 0, sz = 0;
  for (int64_t b = 0; b < nblocks; ++b) {
    ss += ps[b];
    sz += pz[b];
  }
  return {gx, ss, sz};
}

at::Tensor fq_per_channel_cpu(const at::Tensor& x_in, const at::Tensor& scale_in, int64_t axis, int64_t qmin,
                              int64_t qmax) {
  const at::Tensor x = x_in.contiguous(), scale = scale_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  const int64_t C = x.size(axis), inner = x.stride(axis), outer = C ? x.numel() / (C * inner) : 0;
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fake_quant_per_channel", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kGrain / inner);
    at::parallel_for(0, outer * C, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        fq_row<scalar_t>(xp + r * inner, yp + r * inner, inner, sp[r % C], scalar_t(0), scalar_t(qmin),
                         scalar_t(qmax));
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> fq_per_channel_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                          const at::Tensor& scale_in, int64_t axis, int64_t qmin,
                                                          int64_t qmax, double factor) {
  const at::Tensor x = x_in.contiguous(), g = grad_in.contiguous(), scale = scale_in.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options());
  at::Tensor gs = at::zeros(scale.sizes(), scale.options());
  if (x.numel() == 0) return {gx, gs};
  const int64_t C = x.size(axis), inner = x.stride(axis), outer = x.numel() / (C * inner);
  std::vector<double> part(outer * C, 0.0), unused(outer * C, 0.0);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "fake_quant_per_channel_bwd", [&] {
    const scalar_t *xp = x.const_data_ptr<scalar_t>(), *gp = g.const_data_ptr<scalar_t>();
    const scalar_t* sp = scale.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kGrain / inner);
    at::parallel_for(0, outer * C, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        fq_row_bwd<scalar_t>(gp + r * inner, xp + r * inner, gxp + r * inner, inner, sp[r % C], scalar_t(0),
                             scalar_t(qmin), scalar_t(qmax), &part[r], &unused[r]);
    });
    scalar_t* gsp = gs.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) {  // partials added in outer-index order
      double acc = 0;
      for (int64_t o = 0; o < outer; ++o) acc += part[o * C + c];
      gsp[c] = static_cast<scalar_t>(acc * factor);
    }
  });
  return {gx, gs};
}

// ------------------------------------------------------------------------- int8 convolution
at::Tensor int8_conv2d_cpu(const at::Tensor& x_in, double x_scale, int64_t x_zp, const at::Tensor& w_in,
                           const at::Tensor& w_scale_in, const c10::optional<at::Tensor>& bias_in,
                           const ConvGeom& g, Act act, bool int8_out, double out_scale, int64_t out_zp) {
  constexpr int64_t kPix = 64;  // output pixels per task: the column tile stays in L1/L2
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous(), w_scale = w_scale_in.contiguous();
  const int64_t K = g.Ci * g.kh * g.kw, Kp = (K + 31) / 32 * 32, P = g.Ho * g.Wo;
  at::Tensor out = at::empty({g.N, g.Co, g.Ho, g.Wo}, x.options().dtype(int8_out ? at::kChar : at::kFloat));
  if (out.numel() == 0) return out;
  // weights reordered to k = (r, q, ci) (the order of the channels-last column rows below),
  // zero-padded to Kp (the padded columns then contribute nothing), their row sums, and the
  // per-channel dequantisation multipliers
  std::vector<int8_t> wp(g.Co * Kp, 0);
  std::vector<int32_t> wsum(g.Co, 0);
  std::vector<float> mult(g.Co), bias(g.Co, 0.f);
  const int8_t* wsrc = w.const_data_ptr<int8_t>();
  const float* wsc = w_scale.const_data_ptr<float>();
  for (int64_t co = 0; co < g.Co; ++co) {
    int32_t s = 0;
    for (int64_t ci = 0; ci < g.Ci; ++ci)
      for (int64_t r = 0; r < g.kh; ++r)
        for (int64_t q = 0; q < g.kw; ++q) {
          const int8_t v = wsrc[((co * g.Ci + ci) * g.kh + r) * g.kw + q];
          wp[co * Kp + (r * g.kw + q) * g.Ci + ci] = v;
          s += v;
        }
    wsum[co] = s;
    mult[co] = static_cast<float>(x_scale) * wsc[co];
  }
  if (bias_in.has_value()) {
    const at::Tensor b = bias_in->contiguous();
    std::memcpy(bias.data(), b.const_data_ptr<float>(), g.Co * sizeof(float));
  }
  const uint8_t zpu = static_cast<uint8_t>(x_zp + 128);
  // the input once in channels-last unsigned form (x + 128), so each tap of a receptive field is
  // one contiguous run of Ci bytes
  const int8_t* xp = x.const_data_ptr<int8_t>();
  const int64_t HW = g.H * g.W;
  std::vector<uint8_t> xt(g.N * HW * g.Ci);
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t b, int64_t e) {
    for (int64_t nh = b; nh < e; ++nh) {
      const int64_t n = nh / g.H, h = nh % g.H;
      for (int64_t ci = 0; ci < g.Ci; ++ci) {
        const int8_t* src = xp + (n * g.Ci + ci) * HW + h * g.W;
        uint8_t* dst = &xt[(n * HW + h * g.W) * g.Ci + ci];
        for (int64_t w_ = 0; w_ < g.W; ++w_) dst[w_ * g.Ci] = static_cast<uint8_t>(src[w_] + 128);
      }
    }
  });
  const int64_t blocks_per_image = (P + kPix - 1) / kPix;
  const float inv_out = static_cast<float>(1.0 / out_scale);
#if defined(PHASOR_QPDE_VNNI)
  const bool vnni = cpu_has_vnni();
#endif
  at::parallel_for(0, g.N * blocks_per_image, 1, [&](int64_t tb, int64_t te) {
    std::vector<uint8_t> col(kPix * Kp);
    std::vector<int32_t> acc(kPix * g.Co);
    for (int64_t t = tb; t < te; ++t) {
      const int64_t n = t / blocks_per_image, p0 = (t % blocks_per_image) * kPix;
      const int64_t np = std::min(kPix, P - p0);
      const uint8_t* xn = &xt[n * HW * g.Ci];
      // gather the receptive fields: one Ci-byte run per tap (the zero point where padded)
      for (int64_t j = 0; j < np; ++j) {
        const int64_t oh = (p0 + j) / g.Wo, ow = (p0 + j) % g.Wo;
        uint8_t* cj = &col[j * Kp];
        for (int64_t r = 0; r < g.kh; ++r) {
          const int64_t ih = oh * g.sh - g.ph + r * g.dh;
          for (int64_t q = 0; q < g.kw; ++q) {
            const int64_t iw = ow * g.sw - g.pw + q * g.dw;
            uint8_t* dst = cj + (r * g.kw + q) * g.Ci;
            if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
              std::memcpy(dst, xn + (ih * g.W + iw) * g.Ci, g.Ci);
            else
              std::memset(dst, zpu, g.Ci);
          }
        }
        std::memset(cj + K, 0, Kp - K);
      }
      // int32 GEMM: acc[co][j]
      int32_t tile[8];
      for (int64_t co = 0; co < g.Co; co += 2) {
        const int nco = static_cast<int>(std::min<int64_t>(2, g.Co - co));
        for (int64_t j = 0; j < np; j += 4) {
          const int nj = static_cast<int>(std::min<int64_t>(4, np - j));
#if defined(PHASOR_QPDE_VNNI)
          if (vnni && nco == 2 && nj == 4)
            dot_tile_2x4_vnni(&wp[co * Kp], Kp, &col[j * Kp], Kp, Kp, tile);
          else
#endif
            dot_tile_generic(&wp[co * Kp], Kp, nco, &col[j * Kp], Kp, nj, Kp, tile);
          for (int c = 0; c < nco; ++c)
            for (int jj = 0; jj < nj; ++jj) acc[(co + c) * kPix + j + jj] = tile[c * 4 + jj];
        }
      }
      // epilogue: remove the zero point, dequantise, bias, activation, output
      for (int64_t co = 0; co < g.Co; ++co) {
        const int32_t corr = static_cast<int32_t>(zpu) * wsum[co];
        const float m = mult[co], b = bias[co];
        const int32_t* a = &acc[co * kPix];
        const int64_t o = (n * g.Co + co) * P + p0;
        if (int8_out) {
          int8_t* op = out.mutable_data_ptr<int8_t>() + o;
          for (int64_t j = 0; j < np; ++j) {
            const float y = activate(static_cast<float>(a[j] - corr) * m + b, act);
            const float q = clampv(std::nearbyint(y * inv_out) + static_cast<float>(out_zp), -128.f, 127.f);
            op[j] = static_cast<int8_t>(q);
          }
        } else {
          float* op = out.mutable_data_ptr<float>() + o;
          for (int64_t j = 0; j < np; ++j) op[j] = activate(static_cast<float>(a[j] - corr) * m + b, act);
        }
      }
    }
  });
  return out;
}

}  // namespace phasor::qpde::PHASOR_CPU_ISA
