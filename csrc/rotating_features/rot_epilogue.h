// Shapes and argument validation of the rotating-layer epilogue ops, shared by the CPU and CUDA
// kernels. Math (per site, vectors over the n rotation dims), following the official code:
//   a = |psi|, y = psi + rot_bias, rho = max(|y|, 1e-12), m = 0.5 a + 0.5 chi,
//   mhat = relu(weight * (m - mean) / sqrt(var + eps) + bias), out = y / rho * mhat.
// The magnitude is taken before the bias, so the bias only turns the orientation.
#pragma once
#include "common/checks.h"
#include <c10/util/Optional.h>

namespace phasor::rot {

constexpr double kNormalizeEps = 1e-12;  // F.normalize's clamp

struct Geometry {
  int64_t B, n, C, S;  // batch, rotation dims, channels, flattened spatial size
  bool lift;           // first-layer lift: psi holds only W(x), chi = W(x)
};

inline int64_t spatial_numel(const at::Tensor& t, int64_t first) {
  int64_t s = 1;
  for (int64_t d = first; d < t.dim(); ++d) s *= t.size(d);
  return s;
}

inline void check_params(const char* op, const at::Tensor& psi, const at::Tensor& rot_bias,
                         const at::Tensor& weight, const at::Tensor& bias, int64_t n, int64_t C) {
  const auto pdt = param_dtype_for(psi.scalar_type());
  check_sizes(op, "rot_bias", rot_bias, {n, C});
  check_sizes(op, "weight", weight, {C});
  check_sizes(op, "bias", bias, {C});
  for (auto [name, t] : {std::pair<const char*, const at::Tensor*>{"rot_bias", &rot_bias},
                         {"weight", &weight}, {"bias", &bias}}) {
    check_device(op, name, *t, psi);
    check_dtype(op, name, *t, pdt);
  }
}

// psi [B, n, C, *spatial] (lift: [B, 1, C, *spatial]), chi [B, C, *spatial] or None (lift).
inline Geometry check_bn_inputs(const char* op, const at::Tensor& psi,
                                const c10::optional<at::Tensor>& chi, const at::Tensor& rot_bias,
                                const at::Tensor& weight, const at::Tensor& bias) {
  check_dim_at_least(op, "psi", psi, 3, "[B, n, C, *spatial]");
  check_floating(op, "psi", psi);
  check_dim(op, "rot_bias", rot_bias, 2, "[n, C]");
  Geometry g{psi.size(0), rot_bias.size(0), psi.size(2), spatial_numel(psi, 3), !chi.has_value()};
  TORCH_CHECK_VALUE(g.n >= 1, op, ": rot_bias must have at least one rotation dim, got shape ",
                    sizes_str(rot_bias.sizes()));
  if (g.lift) {
    TORCH_CHECK_VALUE(psi.size(1) == 1, op, ": with chi=None (first-layer lift) psi must be "
                      "[B, 1, C, *spatial] = W(x), got ", sizes_str(psi.sizes()));
  } else {
    TORCH_CHECK_VALUE(psi.size(1) == g.n, op, ": psi has ", psi.size(1),
                      " rotation dims (dim 1) but rot_bias has ", g.n);
    const at::Tensor& c = *chi;
    std::vector<int64_t> want{g.B, g.C};
    for (int64_t d = 3; d < psi.dim(); ++d) want.push_back(psi.size(d));
    check_sizes(op, "chi", c, want);
    check_device(op, "chi", c, psi);
    check_dtype(op, "chi", c, psi.scalar_type());
  }
  check_params(op, psi, rot_bias, weight, bias, g.n, g.C);
  return g;
}

inline void check_stats(const char* op, const char* name, const at::Tensor& t, const at::Tensor& psi,
                        int64_t C) {
  check_sizes(op, name, t, {C});
  check_device(op, name, t, psi);
  check_dtype(op, name, t, param_dtype_for(psi.scalar_type()));
}

// LayerNorm row statistics [B], kept in the parameter dtype (float32 for 16-bit psi, as torch does).
inline void check_row_stats(const char* op, const char* name, const at::Tensor& t, const at::Tensor& psi,
                            int64_t B) {
  check_sizes(op, name, t, {B});
  check_device(op, name, t, psi);
  check_dtype(op, name, t, param_dtype_for(psi.scalar_type()));
}

inline void check_grad(const char* op, const char* name, const at::Tensor& g, const at::Tensor& like_t,
                       c10::IntArrayRef want) {
  check_sizes(op, name, g, want);
  check_device(op, name, g, like_t);
  check_dtype(op, name, g, like_t.scalar_type());
}

// Output shape of the BN epilogue: psi's shape with dim 1 = n (lift mode expands it).
inline std::vector<int64_t> out_sizes(const at::Tensor& psi, int64_t n) {
  std::vector<int64_t> s(psi.sizes().begin(), psi.sizes().end());
  s[1] = n;
  return s;
}

inline std::vector<int64_t> mag_sizes(const at::Tensor& psi) {
  std::vector<int64_t> s(psi.sizes().begin(), psi.sizes().end());
  s.erase(s.begin() + 1);
  return s;
}

// LayerNorm variant: psi [B, n, C], chi [B, C].
inline Geometry check_ln_inputs(const char* op, const at::Tensor& psi, const at::Tensor& chi,
                                const at::Tensor& rot_bias, const at::Tensor& weight,
                                const at::Tensor& bias) {
  check_dim(op, "psi", psi, 3, "[B, n, C]");
  check_floating(op, "psi", psi);
  check_dim(op, "rot_bias", rot_bias, 2, "[n, C]");
  Geometry g{psi.size(0), psi.size(1), psi.size(2), 1, false};
  TORCH_CHECK_VALUE(g.n >= 1, op, ": psi must have at least one rotation dim (dim 1), got shape ",
                    sizes_str(psi.sizes()));
  TORCH_CHECK_VALUE(rot_bias.size(0) == g.n, op, ": psi has ", g.n,
                    " rotation dims (dim 1) but rot_bias has ", rot_bias.size(0));
  check_sizes(op, "chi", chi, {g.B, g.C});
  check_device(op, "chi", chi, psi);
  check_dtype(op, "chi", chi, psi.scalar_type());
  check_params(op, psi, rot_bias, weight, bias, g.n, g.C);
  return g;
}

}  // namespace phasor::rot
