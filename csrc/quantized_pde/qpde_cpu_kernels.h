// CPU kernels of the quantized-PDE ops: fused fake quantization (forward and one-pass backward)
// and the int8 convolution with its epilogue. Compiled once per instruction set
// (qpde_cpu_{base,avx2,avx512}.cpp define PHASOR_CPU_ISA); qpde_cpu.cpp picks one at run time.
//
// Fake quantization is elementwise: threads take contiguous element ranges, inner loops are
// branch-free `omp simd` loops (torch's own formula: rint(x * (1/s)) + z, clamp, - z, * s,
// so outputs equal torch.fake_quantize_* bit for bit). The backward produces grad_x and the
// scale / zero-point gradients in the same pass; the sums are taken per fixed block of elements
// (per tensor) or per (outer index, channel) row (per channel), then the partials are added in
// index order, so the result does not depend on the thread count.
//
// The int8 convolution is an implicit GEMM over blocks of 64 output pixels: the input is first
// rewritten as unsigned bytes (x + 128) in a [N][Ci/4][H][W][4] layout; each task gathers its
// pixels' receptive fields into a column tile [K/4][64][4] (contiguous row copies; the zero point
// where padded), multiplies it with the int8 weights (int32 accumulation; AVX-VNNI vpdpbusd on
// 4 x 16 register tiles where the CPU has it, a portable loop otherwise), removes the zero point
// with the weight row sums, and applies the epilogue (scale, bias, activation, requantisation).
#include "quantized_pde/qpde_cpu_entry.h"

#include "common/cpu_scratch.h"
#include "common/cpu_math.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
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
    const T q = clampv(std::rint(x[i] * inv) + z, qmin, qmax);
    y[i] = (q - z) * s;
  }
}

// grad_x (straight through inside the range), and returns the row's sums of grad * d x_hat/d s
// (without the LSQ factor) and grad * d x_hat/d z.
// No FMA contraction here: the AVX2 / AVX-512 builds (-mfma, GNU dialect) would fuse the fake-quant
// product into the `xfq - x` that follows, rounding d x_hat / d s differently from the reference and
// the CUDA kernel (which keeps that product separate with __fmul_rn).
template <typename T>
__attribute__((optimize("fp-contract=off"))) void fq_row_bwd(const T* g, const T* x, T* gx, int64_t n, T s, T z, T qmin, T qmax, double* ds_sum,
                double* dz_sum) {
  const T inv = T(1) / s;
  const T ds_lo = qmin - z, ds_hi = qmax - z;
  double ss = 0, sz = 0;
#pragma omp simd reduction(+ : ss, sz)
  for (int64_t i = 0; i < n; ++i) {
    const T q = std::rint(x[i] * inv) + z;
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

// ---- int8 GEMM core over a column tile colT [K/4][kPix][4] (four consecutive k of one pixel per
// 4 bytes): acc[c][j] = sum_k w[c][k] * col(j, k), u8 x s8 -> s32 ------------------------------------
// Portable version: rows co in [c0, c1), pixels j < np.
void gemm_generic(const int8_t* w, int64_t ldw, int64_t c0, int64_t c1, const uint8_t* colT, int64_t kpix,
                  int64_t np, int64_t K, int32_t* acc, int64_t ldacc) {
  for (int64_t c = c0; c < c1; ++c) {
    int32_t* a = acc + c * ldacc;
    for (int64_t j = 0; j < np; ++j) a[j] = 0;
    for (int64_t kg = 0; kg < K / 4; ++kg)
      for (int cc = 0; cc < 4; ++cc) {
        const int32_t wv = w[c * ldw + kg * 4 + cc];
        const uint8_t* col = colT + kg * kpix * 4 + cc;
#pragma omp simd
        for (int64_t j = 0; j < np; ++j) a[j] += wv * static_cast<int32_t>(col[j * 4]);
      }
  }
}

#if defined(PHASOR_QPDE_VNNI)
// 4 output channels x 16 pixels, pixels in the vector lanes (no horizontal sums); each weight
// quadruple is broadcast to all lanes and vpdpbusd adds its four u8 x s8 products per lane.
__attribute__((target("avx2,avxvnni"))) void gemm_4x16_vnni(const int8_t* w, int64_t ldw, const uint8_t* colT,
                                                             int64_t kpix, int64_t K, int32_t* acc,
                                                             int64_t ldacc) {
  __m256i a[4][2];
#pragma GCC unroll 4
  for (auto& r : a)
#pragma GCC unroll 4
    for (auto& v : r) v = _mm256_setzero_si256();
  for (int64_t kg = 0; kg < K / 4; ++kg) {
    const uint8_t* c = colT + kg * kpix * 4;
    const __m256i c0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c));
    const __m256i c1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c + 32));
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      int32_t wq;
      std::memcpy(&wq, w + r * ldw + kg * 4, 4);
      const __m256i wb = _mm256_set1_epi32(wq);
      a[r][0] = _mm256_dpbusd_avx_epi32(a[r][0], c0, wb);
      a[r][1] = _mm256_dpbusd_avx_epi32(a[r][1], c1, wb);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * ldacc), a[r][0]);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(acc + r * ldacc + 8), a[r][1]);
  }
}

bool cpu_has_vnni() {
  static const bool has = __builtin_cpu_supports("avxvnni");
  return has;
}
#endif

#if defined(PHASOR_QPDE_VNNI512)
// AVX512-VNNI (EVEX vpdpbusd; CPUs such as AMD Zen 4 and Intel Ice Lake server have it but not the
// VEX-encoded AVX-VNNI above): 4 output channels x the whole 64-pixel tile, 16 accumulators.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void gemm_4x64_vnni512(
    const int8_t* w, int64_t ldw, const uint8_t* colT, int64_t kpix, int64_t K, int32_t* acc, int64_t ldacc) {
  __m512i a[4][4];
#pragma GCC unroll 4
  for (auto& r : a)
#pragma GCC unroll 4
    for (auto& v : r) v = _mm512_setzero_si512();
  for (int64_t kg = 0; kg < K / 4; ++kg) {
    const uint8_t* c = colT + kg * kpix * 4;
    __m512i col[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) col[v] = _mm512_loadu_si512(c + 64 * v);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r) {
      int32_t wq;
      std::memcpy(&wq, w + r * ldw + kg * 4, 4);
      const __m512i wb = _mm512_set1_epi32(wq);
#pragma GCC unroll 4
      for (int v = 0; v < 4; ++v) a[r][v] = _mm512_dpbusd_epi32(a[r][v], col[v], wb);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) _mm512_storeu_si512(acc + r * ldacc + 16 * v, a[r][v]);
}

bool cpu_has_vnni512() {
  static const bool has = __builtin_cpu_supports("avx512vnni");
  return has;
}
#endif

template <Act A>
inline float activate(float y) {
  if constexpr (A == Act::Relu) return y > 0.f ? y : 0.f;
  if constexpr (A == Act::Gelu) {  // in double: erf_rational's error is then below float rounding
    const double yd = y;
    return static_cast<float>(0.5 * yd * (1.0 + erf_rational(yd * 0.70710678118654752)));
  }
  return y;
}

// f(std::integral_constant<Act, act>) so each epilogue loop is compiled per activation
// (branch-free, vectorisable for none / relu).
template <typename F>
void with_act(Act act, F&& f) {
  switch (act) {
    case Act::Relu: f(std::integral_constant<Act, Act::Relu>{}); return;
    case Act::Gelu: f(std::integral_constant<Act, Act::Gelu>{}); return;
    default: f(std::integral_constant<Act, Act::None>{}); return;
  }
}

struct EpilogueRow {
  const int32_t* acc;  // one output channel's accumulators for the block
  int64_t n;
  int32_t corr;        // z_x * sum(w): removes the zero point
  float mult, bias;    // s_x * s_w[co], bias[co]
};

// (the row's fields are read into locals first: an int8 output may alias anything, and GCC then
// reloaded them every element and left the loop scalar)
template <Act A>
void epilogue_float(const EpilogueRow& r, float* __restrict out) {
  const int32_t* __restrict acc = r.acc;
  const int64_t n = r.n;
  const int32_t corr = r.corr;
  const float mult = r.mult, bias = r.bias;
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) out[j] = activate<A>(static_cast<float>(acc[j] - corr) * mult + bias);
}

template <Act A>
void epilogue_int8(const EpilogueRow& r, float inv_out, int64_t out_zp, int8_t* __restrict out) {
  const int32_t* __restrict acc = r.acc;
  const int64_t n = r.n;
  const int32_t corr = r.corr;
  const float mult = r.mult, bias = r.bias, z = static_cast<float>(out_zp);
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const float y = activate<A>(static_cast<float>(acc[j] - corr) * mult + bias);
    // through int32: a direct float -> int8 cast vectorised as range compares and byte blends
    const float q = clampv(std::rint(y * inv_out) + z, -128.f, 127.f);
    out[j] = static_cast<int8_t>(static_cast<int32_t>(q));
  }
}

// x (int8 [N][Ci][HW]) as unsigned bytes x + 128 in [N][C4][HW][4]: channel 4 c4 + cc of pixel i at
// ((n C4 + c4) HW + i) 4 + cc; the channels that pad Ci up to a multiple of 4 hold zpu. One 32-bit
// word per pixel from the four channel rows, a loop the compiler vectorises (the byte-at-a-time
// scatter it replaces was about 40% of a 1x1 conv).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "to_unsigned_quads packs channel cc into byte cc");
void to_unsigned_quads(const int8_t* x, int64_t N, int64_t Ci, int64_t HW, uint8_t zpu, uint8_t* xt) {
  const int64_t C4 = (Ci + 3) / 4;
  at::parallel_for(0, N * C4, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t n = t / C4, c4 = t % C4;
      uint32_t* __restrict dst = reinterpret_cast<uint32_t*>(xt + t * HW * 4);
      if (4 * c4 + 3 < Ci) {
        const uint8_t* __restrict s0 = reinterpret_cast<const uint8_t*>(x + (n * Ci + 4 * c4) * HW);
        const uint8_t* __restrict s1 = s0 + HW;
        const uint8_t* __restrict s2 = s1 + HW;
        const uint8_t* __restrict s3 = s2 + HW;
#pragma omp simd
        for (int64_t i = 0; i < HW; ++i)
          dst[i] = (uint32_t(s0[i]) | uint32_t(s1[i]) << 8 | uint32_t(s2[i]) << 16 | uint32_t(s3[i]) << 24) ^ 0x80808080u;
      } else {
        uint8_t* d = xt + t * HW * 4;
        for (int64_t cc = 0; cc < 4; ++cc) {
          const int64_t ci = 4 * c4 + cc;
          const int8_t* src = x + (n * Ci + ci) * HW;
          for (int64_t i = 0; i < HW; ++i) d[i * 4 + cc] = ci < Ci ? static_cast<uint8_t>(src[i] + 128) : zpu;
        }
      }
    }
  });
}

// Gathers one block of np output pixels (from p0) of image plane set xn ([C4][HW][4] unsigned
// bytes) into the column tile colT [K/4][kpix][4]: for each (tap, channel quadruple), the block's
// pixels by output row, a contiguous copy per row where the stride is 1; zpu where padded.
void gather_tile(const ConvGeom& g, const uint8_t* xn, int64_t HW, int64_t C4, int64_t K, int64_t p0, int64_t np,
                 uint8_t zpu, int64_t kpix, uint8_t* colT) {
  for (int64_t kg = 0; kg < K / 4; ++kg) {
    const int64_t tap = kg / C4, c4 = kg % C4, r = tap / g.kw, q = tap % g.kw;
    uint8_t* dst = colT + kg * kpix * 4;
    const uint8_t* plane = xn + c4 * HW * 4;
    for (int64_t j = 0; j < np;) {
      const int64_t oh = (p0 + j) / g.Wo, ow = (p0 + j) % g.Wo, run = std::min(np - j, g.Wo - ow);
      const int64_t ih = oh * g.sh - g.ph + r * g.dh;
      if (ih < 0 || ih >= g.H) {
        std::memset(dst + j * 4, zpu, run * 4);
      } else {
        const uint8_t* row = plane + ih * g.W * 4;
        const int64_t iw0 = ow * g.sw - g.pw + q * g.dw, iw1 = iw0 + (run - 1) * g.sw;
        if (g.sw == 1 && iw0 >= 0 && iw1 < g.W) {
          std::memcpy(dst + j * 4, row + iw0 * 4, run * 4);
        } else {
          for (int64_t u = 0; u < run; ++u) {
            const int64_t iw = iw0 + u * g.sw;
            if (iw >= 0 && iw < g.W)
              std::memcpy(dst + (j + u) * 4, row + iw * 4, 4);
            else
              std::memset(dst + (j + u) * 4, zpu, 4);
          }
        }
      }
      j += run;
    }
  }
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
  const int64_t C4 = (g.Ci + 3) / 4, taps = g.kh * g.kw, K = taps * C4 * 4, P = g.Ho * g.Wo;
  at::Tensor out = at::empty({g.N, g.Co, g.Ho, g.Wo}, x.options().dtype(int8_out ? at::kChar : at::kFloat));
  if (out.numel() == 0) return out;
  // weights in the column order k = ((r * kw + q) * C4 + c4) * 4 + cc (channel ci = 4 c4 + cc; the
  // channels padded up to a multiple of 4 get weight 0), their row sums, and the per-channel
  // dequantisation multipliers
  std::vector<int8_t> wp(g.Co * K, 0);
  std::vector<int32_t> wsum(g.Co, 0);
  std::vector<float> mult(g.Co), bias(g.Co, 0.f);
  const int8_t* wsrc = w.const_data_ptr<int8_t>();
  const float* wsc = w_scale.const_data_ptr<float>();
  for (int64_t co = 0; co < g.Co; ++co) {
    int32_t s = 0;
    for (int64_t ci = 0; ci < g.Ci; ++ci)
      for (int64_t t = 0; t < taps; ++t) {
        const int8_t v = wsrc[(co * g.Ci + ci) * taps + t];
        wp[co * K + (t * C4 + ci / 4) * 4 + ci % 4] = v;
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
  // the input once as unsigned bytes (x + 128) in [N][C4][H][W][4] layout: for a fixed channel
  // quadruple and input row, consecutive pixels are consecutive 4-byte groups, so a stride-1
  // row of a receptive-field tap is one contiguous copy into the column tile. A 1x1 conv with
  // stride 1 and no padding reads its tiles in place: the layout is the column tile's, with a row
  // stride of HW pixels (kSlack: the last partial tile's unused lanes read past the end).
  const int64_t HW = g.H * g.W;
  const bool in_place = taps == 1 && g.sh == 1 && g.sw == 1 && g.ph == 0 && g.pw == 0;
  constexpr int64_t kSlack = kPix * 4;
  CpuScratch scratch({size_t(g.N * C4 * HW * 4 + kSlack)});
  uint8_t* xt = scratch.get<uint8_t>(0);
  to_unsigned_quads(x.const_data_ptr<int8_t>(), g.N, g.Ci, HW, zpu, xt);
  std::memset(xt + g.N * C4 * HW * 4, zpu, kSlack);
  const int64_t blocks_per_image = (P + kPix - 1) / kPix;
  const float inv_out = static_cast<float>(1.0 / out_scale);
#if defined(PHASOR_QPDE_VNNI)
  const bool vnni = cpu_has_vnni();
#endif
#if defined(PHASOR_QPDE_VNNI512)
  const bool vnni512 = cpu_has_vnni512();
#endif
  at::parallel_for(0, g.N * blocks_per_image, 1, [&](int64_t tb, int64_t te) {
    std::vector<uint8_t> colT(in_place ? 0 : K * kPix, zpu);  // [K/4][kPix][4]
    std::vector<int32_t> acc(kPix * g.Co);
    for (int64_t t = tb; t < te; ++t) {
      const int64_t n = t / blocks_per_image, p0 = (t % blocks_per_image) * kPix;
      const int64_t np = std::min(kPix, P - p0);
      // the column tile: col + kg * kstride * 4 holds (tap, channel quadruple) kg for the block's pixels
      const uint8_t* col = in_place ? xt + (n * C4 * HW + p0) * 4 : colT.data();
      const int64_t kstride = in_place ? HW : kPix;
      if (!in_place) gather_tile(g, xt + n * C4 * HW * 4, HW, C4, K, p0, np, zpu, kPix, colT.data());
      // int32 GEMM: acc[co][j] (a partial block computes all kPix lanes; the extra are never read)
      int64_t co_done = 0;
#if defined(PHASOR_QPDE_VNNI512)
      static_assert(kPix == 64, "gemm_4x64_vnni512 covers a 64-pixel tile");
      if (vnni512) {
        co_done = g.Co / 4 * 4;
        for (int64_t co = 0; co < co_done; co += 4)
          gemm_4x64_vnni512(&wp[co * K], K, col, kstride, K, &acc[co * kPix], kPix);
      }
#endif
#if defined(PHASOR_QPDE_VNNI)
      if (vnni && co_done == 0) {
        co_done = g.Co / 4 * 4;
        for (int64_t co = 0; co < co_done; co += 4)
          for (int64_t j = 0; j < np; j += 16)
            gemm_4x16_vnni(&wp[co * K], K, col + j * 4, kstride, K, &acc[co * kPix + j], kPix);
      }
#endif
      gemm_generic(wp.data(), K, co_done, g.Co, col, kstride, np, K, acc.data(), kPix);
      // epilogue: remove the zero point, dequantise, bias, activation, output
      for (int64_t co = 0; co < g.Co; ++co) {
        const int64_t o = (n * g.Co + co) * P + p0;
        const EpilogueRow row{&acc[co * kPix], np, static_cast<int32_t>(zpu) * wsum[co], mult[co], bias[co]};
        if (int8_out)
          with_act(act, [&](auto a) { epilogue_int8<decltype(a)::value>(row, inv_out, out_zp,
                                                                           out.mutable_data_ptr<int8_t>() + o); });
        else
          with_act(act, [&](auto a) { epilogue_float<decltype(a)::value>(row, out.mutable_data_ptr<float>() + o); });
      }
    }
  });
  return out;
}

}  // namespace phasor::qpde::PHASOR_CPU_ISA
