// CPU registration of the quantized-PDE ops: argument and value checks, then the kernel build for
// the instruction set chosen at run time (common/cpu_isa.h).
#include "common/cpu_isa.h"
#include "quantized_pde/qpde_cpu_entry.h"

#include <ATen/ops/full.h>
#include <torch/library.h>

#include <cmath>

namespace phasor::qpde {
namespace {

double positive_scale(const char* op, const at::Tensor& scale) {
  const double s = scale.item<double>();
  TORCH_CHECK_VALUE(std::isfinite(s) && s > 0, op, ": scale must be positive and finite, got ", s);
  return s;
}

double rounded_zero_point(const char* op, const at::Tensor& zero_point, int64_t qmin, int64_t qmax) {
  const double z = std::nearbyint(zero_point.item<double>());
  TORCH_CHECK_VALUE(z >= qmin && z <= qmax, op, ": zero_point (rounded: ", z, ") must lie in [quant_min, quant_max] = [",
                    qmin, ", ", qmax, "]");
  return z;
}

void check_channel_scales(const char* op, const char* name, const at::Tensor& scale) {
  const at::Tensor s = scale.to(at::kDouble).contiguous();
  const double* p = s.const_data_ptr<double>();
  for (int64_t i = 0; i < s.numel(); ++i)
    TORCH_CHECK_VALUE(std::isfinite(p[i]) && p[i] > 0, op, ": every entry of ", name, " must be positive and finite, got ", p[i],
                      " at channel ", i);
}

at::Tensor fq_tensor(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zp, int64_t qmin, int64_t qmax,
                     double /*grad_factor: backward only*/) {
  const char* op = "phasor::fake_quant_per_tensor";
  check_fq_per_tensor(op, x, scale, zp, qmin, qmax);
  const double s = positive_scale(op, scale), z = rounded_zero_point(op, zp, qmin, qmax);
  return PHASOR_ISA_KERNEL(fq_per_tensor_cpu)(x, s, z, qmin, qmax);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fq_tensor_bwd(const at::Tensor& grad, const at::Tensor& x,
                                                             const at::Tensor& scale, const at::Tensor& zp,
                                                             int64_t qmin, int64_t qmax, double factor) {
  const char* op = "phasor::fake_quant_per_tensor_bwd";
  check_fq_per_tensor(op, x, scale, zp, qmin, qmax);
  check_same_shape(op, "grad", grad, x);
  const double s = positive_scale(op, scale), z = rounded_zero_point(op, zp, qmin, qmax);
  auto [gx, ss, sz] = PHASOR_ISA_KERNEL(fq_per_tensor_bwd_cpu)(grad, x, s, z, qmin, qmax);
  return {gx, at::full(scale.sizes(), ss * factor, scale.options()),
          at::full(zp.sizes(), sz * factor, zp.options())};
}

at::Tensor fq_channel(const at::Tensor& x, const at::Tensor& scale, int64_t axis, int64_t qmin, int64_t qmax,
                      double /*grad_factor: backward only*/) {
  const char* op = "phasor::fake_quant_per_channel";
  const int64_t ax = check_fq_per_channel(op, x, scale, axis, qmin, qmax);
  check_channel_scales(op, "scale", scale);
  return PHASOR_ISA_KERNEL(fq_per_channel_cpu)(x, scale, ax, qmin, qmax);
}

std::tuple<at::Tensor, at::Tensor> fq_channel_bwd(const at::Tensor& grad, const at::Tensor& x,
                                                  const at::Tensor& scale, int64_t axis, int64_t qmin,
                                                  int64_t qmax, double factor) {
  const char* op = "phasor::fake_quant_per_channel_bwd";
  const int64_t ax = check_fq_per_channel(op, x, scale, axis, qmin, qmax);
  check_same_shape(op, "grad", grad, x);
  check_channel_scales(op, "scale", scale);
  return PHASOR_ISA_KERNEL(fq_per_channel_bwd_cpu)(grad, x, scale, ax, qmin, qmax, factor);
}

at::Tensor conv(const at::Tensor& x, double x_scale, int64_t x_zp, const at::Tensor& w, const at::Tensor& w_scale,
                const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                c10::IntArrayRef dilation, c10::string_view activation, c10::string_view output, double out_scale,
                int64_t out_zp) {
  const char* op = "phasor::int8_conv2d";
  const Act act = parse_activation(op, activation);
  const bool int8_out = parse_output(op, output);
  const ConvGeom g = check_int8_conv(op, x, x_scale, x_zp, w, w_scale, bias, stride, padding, dilation, int8_out,
                                     out_scale, out_zp);
  check_channel_scales(op, "w_scale", w_scale);
  return PHASOR_ISA_KERNEL(int8_conv2d_cpu)(x, x_scale, x_zp, w, w_scale, bias, g, act, int8_out, out_scale,
                                            out_zp);
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CPU, m) {
  m.impl("fake_quant_per_tensor", &fq_tensor);
  m.impl("fake_quant_per_tensor_bwd", &fq_tensor_bwd);
  m.impl("fake_quant_per_channel", &fq_channel);
  m.impl("fake_quant_per_channel_bwd", &fq_channel_bwd);
  m.impl("int8_conv2d", &conv);
}

}  // namespace phasor::qpde
