// CUDA kernels of the quantized-PDE ops: fused fake quantization (forward; one-pass backward with
// deterministic two-stage sums) and the int8 convolution. Same math and checks as
// qpde_cpu_kernels.h / qpde_checks.h.
//
// Scale and zero point stay on the device (no host sync): the kernels read them, round the zero
// point and clamp it into [quant_min, quant_max] (the CPU entry rejects an out-of-range one
// instead; a device-side check would need a sync). Scale gradients: every block reduces a fixed
// slice with a fixed-order tree into a partial, and one more launch adds the partials with a
// fixed-order block reduction, so results do not depend on scheduling.
//
// Int8 conv: for 1x1, stride-1, unpadded convs with up to 256 input channels, the direct tensor-core
// kernel of qpde_int8_conv_cuda.cu (reads NCHW as it is); for 3x3, stride-1, padding-1, undilated
// convs the direct 3x3 kernel (NCHW as it is, weights repacked per call); else the tensor-core implicit GEMM with
// its NHWC prep pass (sm_80+) wherever its index limits allow; otherwise, or with
// PHASOR_QPDE_CUDA_KERNEL=dp4a (read on every call), the direct kernel below: one thread per output element (n, co, oh, ow), input channels four at a time
// into one __dp4a (s8 x s8 -> s32). Both read the zero point at padded taps and remove it with
// acc - z_x * sum(w), as on the CPU.
#include "quantized_pde/qpde_checks.h"
#include "quantized_pde/qpde_int8_conv_cuda.h"

#include "common/cuda_host.h"
#include "common/cuda_utils.cuh"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <tuple>

namespace phasor::qpde {
namespace {

using phasor::cuda::ceil_div;
using phasor::cuda::grid_for;

constexpr int kThreads = 256;
constexpr int64_t kChunk = 4096;  // elements per block in the backward (fixed: sums don't depend on the grid)

template <typename T>
__device__ __forceinline__ T clampv(T v, T lo, T hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

template <typename T>
__device__ __forceinline__ T zero_point_of(const T* zp, T qmin, T qmax) {
  return clampv(nearbyint(zp[0]), qmin, qmax);
}

// Fixed-order block sum of two doubles (shared-memory tree over kThreads lanes).
__device__ __forceinline__ void block_sum2(double& a, double& b) {
  __shared__ double sa[kThreads], sb[kThreads];
  sa[threadIdx.x] = a;
  sb[threadIdx.x] = b;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      sa[threadIdx.x] += sa[threadIdx.x + s];
      sb[threadIdx.x] += sb[threadIdx.x + s];
    }
    __syncthreads();
  }
  a = sa[0];
  b = sb[0];
}

template <typename T>
__global__ void fq_tensor_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, const T* scale,
                                     const T* zp, T qmin, T qmax) {
  const T s = scale[0], inv = T(1) / s, z = zero_point_of(zp, qmin, qmax);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    y[i] = (clampv(nearbyint(x[i] * inv) + z, qmin, qmax) - z) * s;
}

// A product nvcc may not fuse into a following add or subtract (the CPU kernel and the reference
// round it on its own; an FMA in (xfq - x) would change ds by up to ~1e-5 relative per element).
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }

// d x_hat / d s (without the LSQ factor) and d x_hat / d z for one element; returns grad_x.
template <typename T>
__device__ __forceinline__ T fq_elem_bwd(T g, T x, T s, T inv, T z, T qmin, T qmax, double& ss, double& sz) {
  const T q = nearbyint(x * inv) + z;
  const bool lo = q < qmin, hi = q > qmax;
  const T xfq = mul_rn(clampv(q, qmin, qmax) - z, s);
  const T ds = lo ? qmin - z : (hi ? qmax - z : (xfq - x) * inv);
  ss += double(g * ds);
  if (lo || hi) {
    sz += double(-g * s);
    return T(0);
  }
  return g;
}

template <typename T>
__global__ void fq_tensor_bwd_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx, int64_t n,
                                     const T* scale, const T* zp, T qmin, T qmax, double* part_s, double* part_z) {
  const T s = scale[0], inv = T(1) / s, z = zero_point_of(zp, qmin, qmax);
  const int64_t lo = blockIdx.x * kChunk, hi = lo + kChunk < n ? lo + kChunk : n;
  double ss = 0, sz = 0;
  for (int64_t i = lo + threadIdx.x; i < hi; i += kThreads) gx[i] = fq_elem_bwd(g[i], x[i], s, inv, z, qmin, qmax, ss, sz);
  block_sum2(ss, sz);
  if (threadIdx.x == 0) {
    part_s[blockIdx.x] = ss;
    part_z[blockIdx.x] = sz;
  }
}

// Partials [rows, cols] summed over rows, times factor, into out[cols] (T). One block per column:
// thread t adds rows t, t + kThreads, ... in order, then block_reduce combines the threads in a
// fixed order, so the result depends only on rows and kThreads (not on scheduling), and a long
// partial list (a large tensor) is no longer summed by a single thread.
template <typename T>
__global__ void sum_rows_kernel(const double* part, int64_t rows, int64_t cols, double factor, T* out) {
  const int64_t c = blockIdx.x;
  double acc = 0;
  for (int64_t r = threadIdx.x; r < rows; r += kThreads) acc += part[r * cols + c];
  acc = phasor::cuda::block_reduce(acc, phasor::cuda::Sum{});
  if (threadIdx.x == 0) out[c] = T(acc * factor);
}

template <typename T>
__global__ void fq_channel_fwd_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n, int64_t C, int64_t inner,
                                      const T* __restrict__ scale, T qmin, T qmax) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const T s = scale[(i / inner) % C];
    y[i] = clampv(nearbyint(x[i] * (T(1) / s)), qmin, qmax) * s;
  }
}

// One block per (outer, channel) row: grad_x and the row's scale-gradient partial.
template <typename T>
__global__ void fq_channel_bwd_kernel(const T* __restrict__ g, const T* __restrict__ x, T* __restrict__ gx, int64_t C,
                                      int64_t inner, const T* __restrict__ scale, T qmin, T qmax, double* part) {
  const int64_t r = blockIdx.x;
  const T s = scale[r % C], inv = T(1) / s;
  double ss = 0, sz = 0;
  for (int64_t i = r * inner + threadIdx.x; i < (r + 1) * inner; i += kThreads)
    gx[i] = fq_elem_bwd(g[i], x[i], s, inv, T(0), qmin, qmax, ss, sz);
  block_sum2(ss, sz);
  if (threadIdx.x == 0) part[r] = ss;
}

template <typename F>
void dispatch_float(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}); return;
    case at::kDouble: f(double{}); return;
    default: TORCH_CHECK_TYPE(false, "phasor: fake quantization on CUDA supports float32 and float64, got ", st);
  }
}

unsigned elementwise_grid(int64_t n) { return static_cast<unsigned>(std::min<int64_t>(ceil_div<int64_t>(n, kThreads), 65535)); }

at::Tensor fq_tensor_cuda(const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& zp, int64_t qmin,
                          int64_t qmax, double) {
  check_fq_per_tensor("phasor::fake_quant_per_tensor", x_in, scale, zp, qmin, qmax);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    fq_tensor_fwd_kernel<T><<<elementwise_grid(x.numel()), kThreads, 0, stream>>>(
        x.const_data_ptr<T>(), y.mutable_data_ptr<T>(), x.numel(), scale.const_data_ptr<T>(), zp.const_data_ptr<T>(),
        T(qmin), T(qmax));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fq_tensor_bwd_cuda(const at::Tensor& grad, const at::Tensor& x_in,
                                                                  const at::Tensor& scale, const at::Tensor& zp,
                                                                  int64_t qmin, int64_t qmax, double factor) {
  const char* op = "phasor::fake_quant_per_tensor_bwd";
  check_fq_per_tensor(op, x_in, scale, zp, qmin, qmax);
  check_same_shape(op, "grad", grad, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), g = grad.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options());
  at::Tensor gs = at::zeros(scale.sizes(), scale.options()), gz = at::zeros(zp.sizes(), zp.options());
  const int64_t n = x.numel(), blocks = ceil_div<int64_t>(n, kChunk);
  if (n == 0) return {gx, gs, gz};
  at::Tensor part = at::empty({2, blocks}, x.options().dtype(at::kDouble));
  double* ps = part.mutable_data_ptr<double>();
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    fq_tensor_bwd_kernel<T><<<grid_for(blocks, op, "blocks"), kThreads, 0, stream>>>(
        g.const_data_ptr<T>(), x.const_data_ptr<T>(), gx.mutable_data_ptr<T>(), n, scale.const_data_ptr<T>(),
        zp.const_data_ptr<T>(), T(qmin), T(qmax), ps, ps + blocks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_rows_kernel<T><<<1, kThreads, 0, stream>>>(ps, blocks, 1, factor, gs.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_rows_kernel<T><<<1, kThreads, 0, stream>>>(ps + blocks, blocks, 1, factor, gz.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gs, gz};
}

at::Tensor fq_channel_cuda(const at::Tensor& x_in, const at::Tensor& scale_in, int64_t axis, int64_t qmin,
                           int64_t qmax, double) {
  const int64_t ax = check_fq_per_channel("phasor::fake_quant_per_channel", x_in, scale_in, axis, qmin, qmax);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), scale = scale_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    fq_channel_fwd_kernel<T><<<elementwise_grid(x.numel()), kThreads, 0, stream>>>(
        x.const_data_ptr<T>(), y.mutable_data_ptr<T>(), x.numel(), x.size(ax), x.stride(ax),
        scale.const_data_ptr<T>(), T(qmin), T(qmax));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> fq_channel_bwd_cuda(const at::Tensor& grad, const at::Tensor& x_in,
                                                       const at::Tensor& scale_in, int64_t axis, int64_t qmin,
                                                       int64_t qmax, double factor) {
  const char* op = "phasor::fake_quant_per_channel_bwd";
  const int64_t ax = check_fq_per_channel(op, x_in, scale_in, axis, qmin, qmax);
  check_same_shape(op, "grad", grad, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), g = grad.contiguous(), scale = scale_in.contiguous();
  at::Tensor gx = at::empty(x.sizes(), x.options());
  at::Tensor gs = at::zeros(scale.sizes(), scale.options());
  if (x.numel() == 0) return {gx, gs};
  const int64_t C = x.size(ax), inner = x.stride(ax), rows = x.numel() / inner;
  at::Tensor part = at::empty({rows}, x.options().dtype(at::kDouble));
  auto stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    fq_channel_bwd_kernel<T><<<grid_for(rows, op, "rows"), kThreads, 0, stream>>>(
        g.const_data_ptr<T>(), x.const_data_ptr<T>(), gx.mutable_data_ptr<T>(), C, inner, scale.const_data_ptr<T>(),
        T(qmin), T(qmax), part.mutable_data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    sum_rows_kernel<T><<<grid_for(C, op, "channels"), kThreads, 0, stream>>>(
        part.const_data_ptr<double>(), rows / C, C, factor, gs.mutable_data_ptr<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gx, gs};
}

// ---------------------------------------------------------------------------- int8 conv (dp4a)
struct ConvArgs {
  ConvGeom g;
  int32_t x_zp, out_zp;
  float x_scale, inv_out;
  Act act;
  bool int8_out, has_bias;
};

__device__ __forceinline__ int32_t pack4(int8_t a, int8_t b, int8_t c, int8_t d) {
  return int32_t(uint8_t(a)) | (int32_t(uint8_t(b)) << 8) | (int32_t(uint8_t(c)) << 16) | (int32_t(uint8_t(d)) << 24);
}

__device__ __forceinline__ float activate(float y, Act act) {
  if (act == Act::Relu) return y > 0.f ? y : 0.f;
  if (act == Act::Gelu) return 0.5f * y * (1.f + erff(y * 0.70710678118654752f));
  return y;
}

__global__ void int8_conv_kernel(const int8_t* __restrict__ x, const int8_t* __restrict__ w,
                                 const float* __restrict__ w_scale, const float* __restrict__ bias, ConvArgs a,
                                 void* out) {
  const ConvGeom& g = a.g;
  const int64_t total = g.N * g.Co * g.Ho * g.Wo;
  const int8_t zp8 = static_cast<int8_t>(a.x_zp);
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ow = idx % g.Wo, oh = (idx / g.Wo) % g.Ho, co = (idx / (g.Wo * g.Ho)) % g.Co,
                  n = idx / (g.Wo * g.Ho * g.Co);
    int32_t acc = 0, wsum = 0;
    for (int64_t r = 0; r < g.kh; ++r) {
      const int64_t ih = oh * g.sh - g.ph + r * g.dh;
      for (int64_t q = 0; q < g.kw; ++q) {
        const int64_t iw = ow * g.sw - g.pw + q * g.dw;
        const bool in = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
        int8_t xv[4], wv[4];
        for (int64_t c0 = 0; c0 < g.Ci; c0 += 4) {
          for (int j = 0; j < 4; ++j) {
            const int64_t ci = c0 + j;
            const bool ok = ci < g.Ci;
            xv[j] = ok ? (in ? x[((n * g.Ci + ci) * g.H + ih) * g.W + iw] : zp8) : int8_t(0);
            wv[j] = ok ? w[((co * g.Ci + ci) * g.kh + r) * g.kw + q] : int8_t(0);
          }
          const int32_t wp = pack4(wv[0], wv[1], wv[2], wv[3]);
          acc = __dp4a(pack4(xv[0], xv[1], xv[2], xv[3]), wp, acc);
          wsum = __dp4a(0x01010101, wp, wsum);
        }
      }
    }
    float y = float(acc - a.x_zp * wsum) * (a.x_scale * w_scale[co]) + (a.has_bias ? bias[co] : 0.f);
    y = activate(y, a.act);
    if (a.int8_out) {
      const float qv = fminf(fmaxf(nearbyintf(y * a.inv_out) + float(a.out_zp), -128.f), 127.f);
      static_cast<int8_t*>(out)[idx] = static_cast<int8_t>(qv);
    } else {
      static_cast<float*>(out)[idx] = y;
    }
  }
}

enum class ConvKernel { Auto, Mma, Mma1x1, Mma3x3, Dp4a };

// PHASOR_QPDE_CUDA_KERNEL: unset, "" or "auto" (mma1x1 where it applies, else mma3x3 where it
// applies, else mma where it applies, else dp4a), "mma" (the prep + implicit-GEMM path, 1x1 and 3x3
// convs included; an error where it does not apply), "mma1x1" / "mma3x3" (the direct 1x1 / 3x3
// path; an error where it does not apply), "dp4a". Read on every call so tests and benchmarks can switch.
ConvKernel conv_kernel_choice(const char* op) {
  const char* env = std::getenv("PHASOR_QPDE_CUDA_KERNEL");
  const std::string_view v = env ? env : "";
  if (v.empty() || v == "auto") return ConvKernel::Auto;
  if (v == "mma") return ConvKernel::Mma;
  if (v == "mma1x1") return ConvKernel::Mma1x1;
  if (v == "mma3x3") return ConvKernel::Mma3x3;
  if (v == "dp4a") return ConvKernel::Dp4a;
  TORCH_CHECK_VALUE(false, op, ": PHASOR_QPDE_CUDA_KERNEL must be auto, mma, mma1x1, mma3x3 or dp4a, got '", std::string(v),
                    "'");
}

at::Tensor int8_conv_cuda(const at::Tensor& x_in, double x_scale, int64_t x_zp, const at::Tensor& w_in,
                          const at::Tensor& w_scale_in, const c10::optional<at::Tensor>& bias_in,
                          c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                          c10::string_view activation, c10::string_view output, double out_scale, int64_t out_zp) {
  const char* op = "phasor::int8_conv2d";
  ConvArgs a{};
  a.act = parse_activation(op, activation);
  a.int8_out = parse_output(op, output);
  a.g = check_int8_conv(op, x_in, x_scale, x_zp, w_in, w_scale_in, bias_in, stride, padding, dilation, a.int8_out,
                        out_scale, out_zp);
  const ConvKernel choice = conv_kernel_choice(op);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous(), ws = w_scale_in.contiguous();
  at::Tensor bias = bias_in.has_value() ? bias_in->contiguous() : at::Tensor();
  a.x_zp = static_cast<int32_t>(x_zp);
  a.out_zp = static_cast<int32_t>(out_zp);
  a.x_scale = static_cast<float>(x_scale);
  a.inv_out = static_cast<float>(1.0 / out_scale);
  a.has_bias = bias.defined();
  at::Tensor out = at::empty({a.g.N, a.g.Co, a.g.Ho, a.g.Wo}, x.options().dtype(a.int8_out ? at::kChar : at::kFloat));
  if (out.numel() == 0) return out;
  const Int8ConvEpilogue e{a.x_scale, a.x_zp, a.inv_out, a.out_zp, a.act, a.int8_out};
  if (choice == ConvKernel::Auto || choice == ConvKernel::Mma1x1) {
    const bool ok = int8_conv_1x1_supported(a.g, x.get_device());
    TORCH_CHECK_VALUE(ok || choice == ConvKernel::Auto, op,
                      ": PHASOR_QPDE_CUDA_KERNEL=mma1x1, but the direct path needs a 1x1 kernel, stride 1, padding "
                      "0, at most 256 input channels, sm_80+ and int32-sized indices");
    if (ok) {
      int8_conv_1x1_cuda(x, w, ws, bias, a.g, e, out);
      return out;
    }
  }
  if (choice == ConvKernel::Auto || choice == ConvKernel::Mma3x3) {
    const bool ok = int8_conv_3x3_supported(a.g, x.get_device());
    TORCH_CHECK_VALUE(ok || choice == ConvKernel::Auto, op,
                      ": PHASOR_QPDE_CUDA_KERNEL=mma3x3, but the direct path needs a 3x3 kernel, stride 1, padding "
                      "1, dilation 1, sm_80+ and int32-sized indices");
    if (ok) {
      int8_conv_3x3_cuda(x, w, ws, bias, a.g, e, out);
      return out;
    }
  }
  if (choice == ConvKernel::Auto || choice == ConvKernel::Mma) {
    const bool ok = int8_conv_mma_supported(a.g, x.get_device());
    TORCH_CHECK_VALUE(ok || choice == ConvKernel::Auto, op,
                      ": PHASOR_QPDE_CUDA_KERNEL=mma, but the tensor-core path needs sm_80+ and int32-sized indices");
    if (ok) {
      int8_conv_mma_cuda(x, w, ws, bias, a.g, e, out);
      return out;
    }
  }
  auto stream = c10::cuda::getCurrentCUDAStream();
  int8_conv_kernel<<<elementwise_grid(out.numel()), kThreads, 0, stream>>>(
      x.const_data_ptr<int8_t>(), w.const_data_ptr<int8_t>(), ws.const_data_ptr<float>(),
      a.has_bias ? bias.const_data_ptr<float>() : nullptr, a, out.mutable_data_ptr());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CUDA, m) {
  m.impl("fake_quant_per_tensor", &fq_tensor_cuda);
  m.impl("fake_quant_per_tensor_bwd", &fq_tensor_bwd_cuda);
  m.impl("fake_quant_per_channel", &fq_channel_cuda);
  m.impl("fake_quant_per_channel_bwd", &fq_channel_bwd_cuda);
  m.impl("int8_conv2d", &int8_conv_cuda);
}

}  // namespace phasor::qpde
