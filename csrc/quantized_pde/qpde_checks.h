// Argument checks of the quantized-PDE ops, shared by the CPU and CUDA entry points (the Python
// fake kernels in phasor/quantized_pde/ops.py mirror them).
#pragma once
#include "common/checks.h"

#include <c10/util/string_view.h>

namespace phasor::qpde {

// Integer range of an 2..8-bit quantizer: quant_min < quant_max, a span of 2^b levels, inside
// [-128, 255] (signed or unsigned 8-bit storage).
inline void check_quant_range(const char* op, int64_t qmin, int64_t qmax) {
  TORCH_CHECK_VALUE(qmin < qmax, op, ": quant_min (", qmin, ") must be below quant_max (", qmax, ")");
  const int64_t levels = qmax - qmin + 1;
  TORCH_CHECK_VALUE(levels >= 4 && levels <= 256 && (levels & (levels - 1)) == 0, op,
                    ": quant_max - quant_min + 1 must be 2^bits with bits in 2..8, got ", levels);
  TORCH_CHECK_VALUE(qmin >= -128 && qmax <= 255, op, ": quant_min/quant_max must lie in [-128, 255], got [",
                    qmin, ", ", qmax, "]");
}

inline void check_one_element(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK_VALUE(t.numel() == 1, op, ": ", name, " must have one element, got shape ", sizes_str(t.sizes()));
  check_dtype(op, name, t, x.scalar_type());
  check_device(op, name, t, x);
}

inline void check_fq_per_tensor(const char* op, const at::Tensor& x, const at::Tensor& scale,
                                const at::Tensor& zero_point, int64_t qmin, int64_t qmax) {
  check_floating(op, "x", x);
  check_one_element(op, "scale", scale, x);
  check_one_element(op, "zero_point", zero_point, x);
  check_quant_range(op, qmin, qmax);
}

// Returns the normalised axis.
inline int64_t check_fq_per_channel(const char* op, const at::Tensor& x, const at::Tensor& scale, int64_t axis,
                                    int64_t qmin, int64_t qmax) {
  check_floating(op, "x", x);
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least one dimension");
  TORCH_CHECK_VALUE(axis >= -x.dim() && axis < x.dim(), op, ": axis ", axis, " is out of range for x with ",
                    x.dim(), " dims");
  const int64_t ax = axis < 0 ? axis + x.dim() : axis;
  check_dim(op, "scale", scale, 1, "[C]");
  TORCH_CHECK_VALUE(scale.size(0) == x.size(ax), op, ": scale must have x.size(axis) = ", x.size(ax),
                    " entries, got ", scale.size(0));
  check_dtype(op, "scale", scale, x.scalar_type());
  check_device(op, "scale", scale, x);
  check_quant_range(op, qmin, qmax);
  return ax;
}

inline void check_same_shape(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  check_sizes(op, name, t, x.sizes());
  check_dtype(op, name, t, x.scalar_type());
  check_device(op, name, t, x);
}

enum class Act { None, Relu, Gelu };

inline Act parse_activation(const char* op, c10::string_view a) {
  if (a == "none") return Act::None;
  if (a == "relu") return Act::Relu;
  if (a == "gelu") return Act::Gelu;
  TORCH_CHECK_VALUE(false, op, ": activation must be none, relu or gelu, got ", std::string(a));
}

// Returns true for int8 output, false for float32.
inline bool parse_output(const char* op, c10::string_view o) {
  if (o == "int8") return true;
  if (o == "float") return false;
  TORCH_CHECK_VALUE(false, op, ": output must be float or int8, got ", std::string(o));
}

struct ConvGeom {
  int64_t N, Ci, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo;
};

inline ConvGeom check_int8_conv(const char* op, const at::Tensor& x, double x_scale, int64_t x_zp,
                                const at::Tensor& w, const at::Tensor& w_scale,
                                const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                                c10::IntArrayRef padding, c10::IntArrayRef dilation, bool int8_out,
                                double out_scale, int64_t out_zp) {
  check_dtype(op, "x", x, at::kChar);
  check_dtype(op, "weight", w, at::kChar);
  check_dim(op, "x", x, 4, "[N, Ci, H, W]");
  check_dim(op, "weight", w, 4, "[Co, Ci, kh, kw]");
  check_device(op, "weight", w, x);
  TORCH_CHECK_VALUE(w.size(1) == x.size(1), op, ": weight has ", w.size(1), " input channels but x has ",
                    x.size(1), " (groups other than 1 are not supported)");
  TORCH_CHECK_VALUE(x_scale > 0, op, ": x_scale must be positive, got ", x_scale);
  TORCH_CHECK_VALUE(x_zp >= -128 && x_zp <= 127, op, ": x_zero_point must lie in [-128, 127], got ", x_zp);
  check_dtype(op, "w_scale", w_scale, at::kFloat);
  check_sizes(op, "w_scale", w_scale, {w.size(0)});
  check_device(op, "w_scale", w_scale, x);
  if (bias.has_value()) {
    check_dtype(op, "bias", *bias, at::kFloat);
    check_sizes(op, "bias", *bias, {w.size(0)});
    check_device(op, "bias", *bias, x);
  }
  TORCH_CHECK_VALUE(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1, op, ": stride must be two positive ints");
  TORCH_CHECK_VALUE(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, op,
                    ": padding must be two non-negative ints");
  TORCH_CHECK_VALUE(dilation.size() == 2 && dilation[0] >= 1 && dilation[1] >= 1, op,
                    ": dilation must be two positive ints");
  if (int8_out) {
    TORCH_CHECK_VALUE(out_scale > 0, op, ": out_scale must be positive, got ", out_scale);
    TORCH_CHECK_VALUE(out_zp >= -128 && out_zp <= 127, op, ": out_zero_point must lie in [-128, 127], got ", out_zp);
  }
  ConvGeom g{x.size(0), x.size(1), x.size(2), x.size(3), w.size(0), w.size(2), w.size(3), stride[0], stride[1],
             padding[0], padding[1], dilation[0], dilation[1], 0, 0};
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
  TORCH_CHECK_VALUE(g.Ho >= 1 && g.Wo >= 1, op, ": the kernel (with dilation) is larger than the padded input");
  return g;
}

}  // namespace phasor::qpde
