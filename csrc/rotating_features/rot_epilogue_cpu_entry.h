// Entry points of the CPU epilogue kernels, declared once per instruction-set variant.
#pragma once
#include "rotating_features/rot_epilogue.h"

#include <tuple>

namespace phasor::rot {

using Fwd4 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Bwd5 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using OptT = c10::optional<at::Tensor>;

#define PHASOR_ROT_CPU_ENTRY_POINTS(ISA)                                                          \
  namespace ISA {                                                                                 \
  Fwd4 rot_bn_fwd_cpu(const at::Tensor& psi, const OptT& chi, const at::Tensor& rot_bias,         \
                      const at::Tensor& weight, const at::Tensor& bias, const OptT& running_mean, \
                      const OptT& running_var, bool training, double eps);                        \
  Bwd5 rot_bn_bwd_cpu(const at::Tensor& grad_out, const OptT& grad_mag, const at::Tensor& psi,    \
                      const OptT& chi, const at::Tensor& rot_bias, const at::Tensor& weight,      \
                      const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& var,      \
                      bool training, double eps);                                                 \
  Fwd4 rot_ln_fwd_cpu(const at::Tensor& psi, const at::Tensor& chi, const at::Tensor& rot_bias,   \
                      const at::Tensor& weight, const at::Tensor& bias, double eps);              \
  Bwd5 rot_ln_bwd_cpu(const at::Tensor& grad_out, const OptT& grad_mag, const at::Tensor& psi,    \
                      const at::Tensor& chi, const at::Tensor& rot_bias, const at::Tensor& weight,\
                      const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& rstd);    \
  }

PHASOR_ROT_CPU_ENTRY_POINTS(base)
PHASOR_ROT_CPU_ENTRY_POINTS(avx2)
PHASOR_ROT_CPU_ENTRY_POINTS(avx512)

}  // namespace phasor::rot
