// Entry points of the CPU quantized-PDE kernels, declared once per instruction-set variant.
#pragma once
#include "quantized_pde/qpde_checks.h"

#include <tuple>

namespace phasor::qpde {

#define PHASOR_QPDE_CPU_ENTRY_POINTS(ISA)                                                                  \
  namespace ISA {                                                                                          \
  at::Tensor fq_per_tensor_cpu(const at::Tensor& x, double scale, double zero_point, int64_t qmin,         \
                               int64_t qmax);                                                              \
  std::tuple<at::Tensor, double, double> fq_per_tensor_bwd_cpu(const at::Tensor& grad, const at::Tensor& x, \
                                                               double scale, double zero_point,            \
                                                               int64_t qmin, int64_t qmax);                \
  at::Tensor fq_per_channel_cpu(const at::Tensor& x, const at::Tensor& scale, int64_t axis, int64_t qmin,  \
                                int64_t qmax);                                                             \
  std::tuple<at::Tensor, at::Tensor> fq_per_channel_bwd_cpu(const at::Tensor& grad, const at::Tensor& x,   \
                                                            const at::Tensor& scale, int64_t axis,         \
                                                            int64_t qmin, int64_t qmax, double factor);    \
  at::Tensor int8_conv2d_cpu(const at::Tensor& x, double x_scale, int64_t x_zp, const at::Tensor& w,       \
                             const at::Tensor& w_scale, const c10::optional<at::Tensor>& bias,             \
                             const ConvGeom& g, Act act, bool int8_out, double out_scale, int64_t out_zp); \
  }

PHASOR_QPDE_CPU_ENTRY_POINTS(base)
PHASOR_QPDE_CPU_ENTRY_POINTS(avx2)
PHASOR_QPDE_CPU_ENTRY_POINTS(avx512)

}  // namespace phasor::qpde
