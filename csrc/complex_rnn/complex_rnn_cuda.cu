// CUDA kernel of the cv-RNN run (separable Gaussian sheet, complex64): the whole S-step run of one
// image in one block, in one launch for the batch, with the state kept in shared memory.
//
// Per step (math: complex_rnn.h), all in shared memory:
//   1. rows:    T[h, w] = sum_q G_c[w, q] X[h, q]  over the band |q - w| <= rw,
//   2. columns: X[h, w] <- m (i omega X[h, w] + alpha s sum_p G_r[h, p] T[p, w]) (in place: each thread
//      reads only its own X[h, w] there), with the block's max |X|^2 for the renormalisation,
//   3. the saved window goes straight to global memory (phase or complex).
// The renormalisation is deferred as on the CPU: the stored state is X / s and the next update
// scales its coefficients by s. float32 throughout (the spec: layer 2's phases are precision
// sensitive, so no TF32 / tensor cores). Device memory traffic is x0, omega, mask once and the window.
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

#include <cuda_runtime.h>

#include <cstdint>

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

int64_t smem_limit(int dev) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return v;
}

at::Tensor cvrnn_run_cuda(const at::Tensor& x0_in, const at::Tensor& omega_in, const c10::optional<at::Tensor>& mask_in,
                          double alpha, double sigma, int64_t steps, bool renorm, int64_t save_start,
                          int64_t save_stop, bool save_phase) {
  constexpr const char* op = "phasor::cvrnn_run";
  const Dims d = check_run(op, x0_in, omega_in, mask_in, alpha, sigma, steps, save_start, save_stop);
  TORCH_CHECK_TYPE(x0_in.scalar_type() == at::kComplexFloat, op,
                   ": the CUDA kernel runs complex64 only (the spec's float32 state), got x0 of dtype ",
                   x0_in.scalar_type(), "; use the CPU for complex128");
  c10::cuda::CUDAGuard guard(x0_in.device());
  auto opts = x0_in.options().dtype(save_phase ? at::kFloat : at::kComplexFloat);
  at::Tensor out = at::empty({d.B, d.T(), d.H, d.W}, opts);
  if (d.B == 0 || d.T() == 0 || d.HW() == 0) return out;
  TORCH_CHECK_VALUE(d.H <= (1 << 15) && d.W <= (1 << 15) && d.stop <= (int64_t(1) << 30), op,
                    ": image sides and the save window must fit 32-bit indices, got ", sizes_str(x0_in.sizes()));
  auto x0 = x0_in.contiguous(), omega = omega_in.contiguous();
  at::Tensor mask = mask_in.has_value() ? mask_in->contiguous() : at::Tensor();
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
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CUDA, m) { m.impl("cvrnn_run", &cvrnn_run_cuda); }

}  // namespace phasor::cvrnn
