// Wave-RNN recurrence: argument validation and sizes, shared by the CPU and CUDA kernels.
//
//   a_t[o, j] = bias[o] + u_t[o, j] + sum_{i < c, k < f} W[o, i, k] h_{t-1}[i, (j + k - p) mod n]
//   h_t       = act(a_t),  p = f / 2,  t = 1..T  (Conv1d cross-correlation with circular padding)
//
// Layouts (all contiguous after the prologue): u / H / grad_H / grad_u [T, B, c, n] (time-major,
// as the official loop), h0 [B, c, n], weight [c, c, f], bias [c]; with the input projection
// inside (proj ops), x [T, B, n_inp], V [c*n, n_inp], bV [c*n], channel-major (offset o*n + j).
#pragma once
#include "common/checks.h"

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <string>

namespace phasor::wave {

enum class Act : int { Relu = 0, Tanh = 1, Identity = 2 };

// The largest n_inp of the fused-projection ops: beyond it the projection is one GEMM outside.
constexpr int64_t kMaxProjInputs = 16;

inline Act parse_activation(const char* op, c10::string_view s) {
  if (s == "relu") return Act::Relu;
  if (s == "tanh") return Act::Tanh;
  if (s == "identity") return Act::Identity;
  TORCH_CHECK_VALUE(false, op, ": activation must be 'relu', 'tanh' or 'identity', got '",
                    std::string(s.data(), s.size()), "'");
}

struct Dims {
  int64_t T = 0, B = 0, c = 0, n = 0, f = 0, p = 0;
  int64_t n_inp = 0;  // proj ops only
  int64_t cn() const { return c * n; }
  int64_t npad() const { return n + 2 * p; }  // a circularly padded ring row
};

// weight [c, c, f] with f odd, bias [c] (parameter dtype), h0 [B, c, n] (state dtype).
inline Dims check_recurrent_params(const char* op, const at::Tensor& ref, int64_t T, int64_t B, int64_t c,
                                   int64_t n, const at::Tensor& weight, const at::Tensor& bias,
                                   const at::Tensor& h0) {
  check_dim(op, "weight", weight, 3, "[c, c, f]");
  const int64_t f = weight.size(2);
  TORCH_CHECK_VALUE(weight.size(0) == c && weight.size(1) == c, op, ": weight must be [c, c, f] with c = ",
                    c, " channels, got ", sizes_str(weight.sizes()));
  TORCH_CHECK_VALUE(f % 2 == 1, op, ": weight's kernel size f (dim 2) must be odd, got ", f);
  check_sizes(op, "bias", bias, {c});
  check_sizes(op, "h0", h0, {B, c, n});
  const auto pdt = param_dtype_for(ref.scalar_type());
  check_dtype(op, "weight", weight, pdt);
  check_dtype(op, "bias", bias, pdt);
  check_dtype(op, "h0", h0, ref.scalar_type());
  check_device(op, "weight", weight, ref);
  check_device(op, "bias", bias, ref);
  check_device(op, "h0", h0, ref);
  Dims d;
  d.T = T, d.B = B, d.c = c, d.n = n, d.f = f, d.p = f / 2;
  return d;
}

inline Dims check_fwd(const char* op, const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                      const at::Tensor& h0) {
  check_floating(op, "u", u);
  check_dim(op, "u", u, 4, "[T, B, c, n]");
  TORCH_CHECK_VALUE(u.size(2) > 0 && u.size(3) > 0, op, ": u must have c > 0 channels and n > 0 ring positions, got ",
                    sizes_str(u.sizes()));
  return check_recurrent_params(op, u, u.size(0), u.size(1), u.size(2), u.size(3), weight, bias, h0);
}

// x [T, B, n_inp], V [c*n, n_inp], bV [c*n]; c and n come from h0 [B, c, n].
inline Dims check_proj_fwd(const char* op, const at::Tensor& x, const at::Tensor& V, const at::Tensor& bV,
                           const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& h0) {
  check_floating(op, "x", x);
  check_dim(op, "x", x, 3, "[T, B, n_inp]");
  check_dim(op, "h0", h0, 3, "[B, c, n]");
  const int64_t n_inp = x.size(2);
  TORCH_CHECK_VALUE(n_inp >= 1 && n_inp <= kMaxProjInputs, op, ": x must have 1 to ", kMaxProjInputs,
                    " input features for the fused projection (project with one matmul and call "
                    "wave_rnn_fwd instead), got n_inp = ", n_inp);
  TORCH_CHECK_VALUE(h0.size(1) > 0 && h0.size(2) > 0, op, ": h0 must have c > 0 channels and n > 0 ring positions, got ",
                    sizes_str(h0.sizes()));
  Dims d = check_recurrent_params(op, x, x.size(0), x.size(1), h0.size(1), h0.size(2), weight, bias, h0);
  d.n_inp = n_inp;
  check_sizes(op, "V", V, {d.cn(), n_inp});
  check_sizes(op, "bV", bV, {d.cn()});
  const auto pdt = param_dtype_for(x.scalar_type());
  check_dtype(op, "V", V, pdt);
  check_dtype(op, "bV", bV, pdt);
  check_device(op, "V", V, x);
  check_device(op, "bV", bV, x);
  return d;
}

// grad_H and H [T, B, c, n] in the state dtype, beside the forward's h0 and weight.
// grad_H is dL/dH [T, B, c, n], or dL/dh_T [B, c, n] alone (training on the last state: the other
// states' gradients are zero, and the caller need not materialise them).
inline bool grad_is_last_only(const at::Tensor& grad_H) { return grad_H.dim() == 3; }

// With T = 0 the last state is h0 itself, so a last-state gradient is h0's gradient (the kernels,
// which see no step, return zeros for it).
inline at::Tensor h0_grad_for(const at::Tensor& kernel_grad_h0, const at::Tensor& grad_H, int64_t T) {
  return (T == 0 && grad_is_last_only(grad_H)) ? grad_H.clone() : kernel_grad_h0;
}

inline void check_states(const char* op, const Dims& d, const at::Tensor& grad_H, const at::Tensor& H) {
  if (grad_is_last_only(grad_H))
    check_sizes(op, "grad_H", grad_H, {d.B, d.c, d.n});
  else
    check_sizes(op, "grad_H", grad_H, {d.T, d.B, d.c, d.n});
  check_sizes(op, "H", H, {d.T, d.B, d.c, d.n});
  check_dtype(op, "grad_H", grad_H, H.scalar_type());
  check_device(op, "grad_H", grad_H, H);
}

inline Dims check_bwd(const char* op, const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& h0,
                      const at::Tensor& weight) {
  check_floating(op, "H", H);
  check_dim(op, "H", H, 4, "[T, B, c, n]");
  check_dim(op, "weight", weight, 3, "[c, c, f]");
  // bias does not enter the backward; a stand-in of the right shape reuses the forward's checks
  Dims d = check_recurrent_params(op, H, H.size(0), H.size(1), H.size(2), H.size(3), weight,
                                  weight.new_empty({H.size(2)}), h0);
  check_states(op, d, grad_H, H);
  return d;
}

inline Dims check_proj_bwd(const char* op, const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& x,
                           const at::Tensor& V, const at::Tensor& h0, const at::Tensor& weight) {
  check_dim(op, "H", H, 4, "[T, B, c, n]");
  check_dim(op, "V", V, 2, "[c*n, n_inp]");
  check_dim(op, "weight", weight, 3, "[c, c, f]");
  Dims d = check_proj_fwd(op, x, V, V.new_empty({V.size(0)}), weight, weight.new_empty({weight.size(0)}), h0);
  check_states(op, d, grad_H, H);
  check_dtype(op, "H", H, x.scalar_type());
  return d;
}

}  // namespace phasor::wave
