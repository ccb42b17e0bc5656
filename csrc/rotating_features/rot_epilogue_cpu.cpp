// CPU registration of the rotating-layer epilogue ops: each call goes to the kernel build for the
// instruction set chosen at run time (common/cpu_isa.h).
#include "common/cpu_isa.h"
#include "rotating_features/rot_epilogue_cpu_entry.h"

#include <torch/library.h>

namespace phasor::rot {
namespace {

Fwd4 rot_bn_fwd(const at::Tensor& psi, const OptT& chi, const at::Tensor& rot_bias, const at::Tensor& weight,
                const at::Tensor& bias, const OptT& rm, const OptT& rv, bool training, double eps) {
  auto f = PHASOR_ISA_KERNEL(rot_bn_fwd_cpu);
  return f(psi, chi, rot_bias, weight, bias, rm, rv, training, eps);
}

Bwd5 rot_bn_bwd(const at::Tensor& g, const OptT& gm, const at::Tensor& psi, const OptT& chi,
                const at::Tensor& rot_bias, const at::Tensor& weight, const at::Tensor& bias,
                const at::Tensor& mean, const at::Tensor& var, bool training, double eps) {
  auto f = PHASOR_ISA_KERNEL(rot_bn_bwd_cpu);
  return f(g, gm, psi, chi, rot_bias, weight, bias, mean, var, training, eps);
}

Fwd4 rot_ln_fwd(const at::Tensor& psi, const at::Tensor& chi, const at::Tensor& rot_bias, const at::Tensor& weight,
                const at::Tensor& bias, double eps) {
  auto f = PHASOR_ISA_KERNEL(rot_ln_fwd_cpu);
  return f(psi, chi, rot_bias, weight, bias, eps);
}

Bwd5 rot_ln_bwd(const at::Tensor& g, const OptT& gm, const at::Tensor& psi, const at::Tensor& chi,
                const at::Tensor& rot_bias, const at::Tensor& weight, const at::Tensor& bias,
                const at::Tensor& mean, const at::Tensor& rstd) {
  auto f = PHASOR_ISA_KERNEL(rot_ln_bwd_cpu);
  return f(g, gm, psi, chi, rot_bias, weight, bias, mean, rstd);
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CPU, m) {
  m.impl("rot_bn_fwd", &rot_bn_fwd);
  m.impl("rot_bn_bwd", &rot_bn_bwd);
  m.impl("rot_ln_fwd", &rot_ln_fwd);
  m.impl("rot_ln_bwd", &rot_ln_bwd);
}

}  // namespace phasor::rot
