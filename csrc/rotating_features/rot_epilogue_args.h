// Host-side prologue shared by the CPU and CUDA kernels of the epilogue ops: validate the inputs
// (rot_epilogue.h), make them contiguous, and allocate the outputs with the dtypes the fake kernels
// promise. The device files then only check the dtypes they support and launch.
#pragma once
#include "common/cpu_memory.h"
#include "rotating_features/rot_epilogue.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

namespace phasor::rot {

using OptTensor = c10::optional<at::Tensor>;

inline at::Tensor contiguous_or_undefined(const OptTensor& t) { return t ? t->contiguous() : at::Tensor(); }

struct BnFwdArgs {
  Geometry g;
  at::Tensor psi, chi, rot_bias, weight, bias;  // chi undefined in lift mode
  at::Tensor out, mag, mean, var;               // mean/var: to fill (training) or the running ones (eval)
};

inline BnFwdArgs prepare_bn_fwd(const char* op, const at::Tensor& psi, const OptTensor& chi,
                                const at::Tensor& rot_bias, const at::Tensor& weight, const at::Tensor& bias,
                                const OptTensor& running_mean, const OptTensor& running_var, bool training,
                                double eps) {
  BnFwdArgs a;
  a.g = check_bn_inputs(op, psi, chi, rot_bias, weight, bias);
  TORCH_CHECK_VALUE(eps >= 0, op, ": eps must be >= 0, got ", eps);
  TORCH_CHECK_VALUE(training || (running_mean.has_value() && running_var.has_value()), op,
                    ": running_mean and running_var are required when training=False");
  if (running_mean) check_stats(op, "running_mean", *running_mean, psi, a.g.C);
  if (running_var) check_stats(op, "running_var", *running_var, psi, a.g.C);
  a.psi = psi.contiguous();
  a.chi = contiguous_or_undefined(chi);
  a.rot_bias = rot_bias.contiguous();
  a.weight = weight.contiguous();
  a.bias = bias.contiguous();
  a.out = at::empty(out_sizes(a.psi, a.g.n), a.psi.options());
  a.mag = at::empty(mag_sizes(a.psi), a.psi.options());
  advise_huge_pages(a.out);
  advise_huge_pages(a.mag);
  if (training) {
    a.mean = at::empty({a.g.C}, a.weight.options());
    a.var = at::empty({a.g.C}, a.weight.options());
  } else {  // returned as outputs, so copies (an op output may not alias an input)
    a.mean = running_mean->clone(at::MemoryFormat::Contiguous);
    a.var = running_var->clone(at::MemoryFormat::Contiguous);
  }
  return a;
}

struct BwdArgs {
  Geometry g;
  at::Tensor grad, gmag, psi, chi, rot_bias, weight, bias, stat0, stat1;  // gmag / chi may be undefined
  at::Tensor g_psi, g_chi, g_rbias, g_weight, g_bias;
};

inline void prepare_common_bwd(BwdArgs& a, const at::Tensor& grad_out, const OptTensor& grad_mag,
                               const at::Tensor& psi, const OptTensor& chi, const at::Tensor& rot_bias,
                               const at::Tensor& weight, const at::Tensor& bias) {
  a.grad = grad_out.contiguous();
  a.gmag = contiguous_or_undefined(grad_mag);
  a.psi = psi.contiguous();
  a.chi = contiguous_or_undefined(chi);
  a.rot_bias = rot_bias.contiguous();
  a.weight = weight.contiguous();
  a.bias = bias.contiguous();
  a.g_psi = at::empty_like(a.psi);
  a.g_chi = a.chi.defined() ? at::empty_like(a.chi) : at::empty({0}, a.psi.options());  // lift: none
  advise_huge_pages(a.g_psi);
  advise_huge_pages(a.g_chi);
  a.g_rbias = at::empty_like(a.rot_bias);
  a.g_weight = at::empty_like(a.weight);
  a.g_bias = at::empty_like(a.bias);
}

// stat0/stat1 = the (mean, var) the forward used.
inline BwdArgs prepare_bn_bwd(const char* op, const at::Tensor& grad_out, const OptTensor& grad_mag,
                              const at::Tensor& psi, const OptTensor& chi, const at::Tensor& rot_bias,
                              const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
                              const at::Tensor& var) {
  BwdArgs a;
  a.g = check_bn_inputs(op, psi, chi, rot_bias, weight, bias);
  check_stats(op, "mean", mean, psi, a.g.C);
  check_stats(op, "var", var, psi, a.g.C);
  check_grad(op, "grad_out", grad_out, psi, out_sizes(psi, a.g.n));
  if (grad_mag) check_grad(op, "grad_mag", *grad_mag, psi, mag_sizes(psi));
  prepare_common_bwd(a, grad_out, grad_mag, psi, chi, rot_bias, weight, bias);
  a.stat0 = mean.contiguous();
  a.stat1 = var.contiguous();
  return a;
}

struct LnFwdArgs {
  Geometry g;
  at::Tensor psi, chi, rot_bias, weight, bias;
  at::Tensor out, mag, mean, rstd;  // row statistics in the parameter dtype
};

inline LnFwdArgs prepare_ln_fwd(const char* op, const at::Tensor& psi, const at::Tensor& chi,
                                const at::Tensor& rot_bias, const at::Tensor& weight, const at::Tensor& bias,
                                double eps) {
  LnFwdArgs a;
  a.g = check_ln_inputs(op, psi, chi, rot_bias, weight, bias);
  TORCH_CHECK_VALUE(eps >= 0, op, ": eps must be >= 0, got ", eps);
  a.psi = psi.contiguous();
  a.chi = chi.contiguous();
  a.rot_bias = rot_bias.contiguous();
  a.weight = weight.contiguous();
  a.bias = bias.contiguous();
  a.out = at::empty_like(a.psi);
  a.mag = at::empty_like(a.chi);
  advise_huge_pages(a.out);
  advise_huge_pages(a.mag);
  const auto stats = a.psi.options().dtype(param_dtype_for(a.psi.scalar_type()));
  a.mean = at::empty({a.g.B}, stats);
  a.rstd = at::empty({a.g.B}, stats);
  return a;
}

// stat0/stat1 = the (mean, rstd) rows of the forward.
inline BwdArgs prepare_ln_bwd(const char* op, const at::Tensor& grad_out, const OptTensor& grad_mag,
                              const at::Tensor& psi, const at::Tensor& chi, const at::Tensor& rot_bias,
                              const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& mean,
                              const at::Tensor& rstd) {
  BwdArgs a;
  a.g = check_ln_inputs(op, psi, chi, rot_bias, weight, bias);
  check_grad(op, "grad_out", grad_out, psi, psi.sizes());
  if (grad_mag) check_grad(op, "grad_mag", *grad_mag, psi, chi.sizes());
  check_row_stats(op, "mean", mean, psi, a.g.B);
  check_row_stats(op, "rstd", rstd, psi, a.g.B);
  prepare_common_bwd(a, grad_out, grad_mag, psi, chi, rot_bias, weight, bias);
  a.stat0 = mean.contiguous();
  a.stat1 = rstd.contiguous();
  return a;
}

}  // namespace phasor::rot
