// GTA attention (Miyato et al., ICLR 2024): argument checks and sizes, shared by the CPU and CUDA kernels.
//
//   q~_i = P_i^T q_i,  k~_j = P_j^-1 k_j,  v~_j = P_j^-1 v_j (v_transform),
//   o~_i = sum_j softmax_j(scale q~_i . k~_j) v~_j,   o_i = P_i o~_i (v_transform).
// P_i = blockdiag(I_triv, q_se3[view]^(+)se3/4, q_so3[view]^(+)so3/8, R(-phi_i) per SO(2) pair); the key
// side passes P^-1 directly (k_se3, k_so3, R(+phi_j)). phi_{2f+a} = pos[a] * freqs[f], pairs interleaved.
// Tokens are view-major with N/V tokens per view.
#pragma once
#include "common/checks.h"

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <optional>

namespace phasor::gta {

constexpr int64_t kMaxHeadDim = 256;

struct Dims {
  int64_t B = 0, H = 0, Nq = 0, Nk = 0, d = 0;
  int64_t triv = 0, se3 = 0, so3 = 0, so2 = 0, F = 0;
  int64_t Vq = 1, Vk = 1;
  bool has_mask = false;
  int64_t tq() const { return Nq / Vq; }  // tokens per query view
  int64_t tk() const { return Nk / Vk; }
};

inline Dims check_fwd(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                      const at::Tensor& q_se3, const at::Tensor& k_se3, const at::Tensor& q_so3,
                      const at::Tensor& k_so3, const at::Tensor& q_pos, const at::Tensor& k_pos,
                      const at::Tensor& freqs, c10::IntArrayRef dims, const std::optional<at::Tensor>& key_mask) {
  check_floating(op, "q", q);
  check_dim(op, "q", q, 4, "[B, H, Nq, d]");
  check_dim(op, "k", k, 4, "[B, H, Nk, d]");
  Dims D;
  D.B = q.size(0), D.H = q.size(1), D.Nq = q.size(2), D.d = q.size(3), D.Nk = k.size(2);
  check_sizes(op, "k", k, {D.B, D.H, D.Nk, D.d});
  check_sizes(op, "v", v, {D.B, D.H, D.Nk, D.d});
  for (auto [name, t] : {std::pair{"k", &k}, std::pair{"v", &v}}) {
    check_dtype(op, name, *t, q.scalar_type());
    check_device(op, name, *t, q);
  }
  TORCH_CHECK_VALUE(dims.size() == 4, op, ": dims must be (d_triv, d_se3, d_so3, d_so2), got ", dims.size(),
                    " entries");
  D.triv = dims[0], D.se3 = dims[1], D.so3 = dims[2], D.so2 = dims[3];
  TORCH_CHECK_VALUE(D.triv >= 0 && D.se3 >= 0 && D.so3 >= 0 && D.so2 >= 0, op, ": dims must be >= 0");
  TORCH_CHECK_VALUE(D.triv + D.se3 + D.so3 + D.so2 == D.d, op, ": dims must add up to the head dim d = ", D.d,
                    " of q, got ", D.triv, " + ", D.se3, " + ", D.so3, " + ", D.so2);
  TORCH_CHECK_VALUE(D.se3 % 4 == 0 && D.so3 % 8 == 0 && D.so2 % 4 == 0, op,
                    ": dims need d_se3 % 4 == 0, d_so3 % 8 == 0 and d_so2 % 4 == 0, got ", D.se3, ", ", D.so3,
                    ", ", D.so2);
  TORCH_CHECK_VALUE(D.d <= kMaxHeadDim, op, ": head dim d must be <= ", kMaxHeadDim, ", got ", D.d);
  D.F = D.so2 / 4;
  check_dim(op, "q_se3", q_se3, 4, "[B, Vq, 4, 4]");
  check_dim(op, "k_se3", k_se3, 4, "[B, Vk, 4, 4]");
  D.Vq = q_se3.size(1), D.Vk = k_se3.size(1);
  check_sizes(op, "q_se3", q_se3, {D.B, D.Vq, 4, 4});
  check_sizes(op, "k_se3", k_se3, {D.B, D.Vk, 4, 4});
  check_sizes(op, "q_so3", q_so3, {D.B, D.Vq, 8, 8});
  check_sizes(op, "k_so3", k_so3, {D.B, D.Vk, 8, 8});
  TORCH_CHECK_VALUE(D.Vq >= 1 && D.Nq % D.Vq == 0, op, ": Nq = ", D.Nq, " query tokens must split evenly into the ",
                    D.Vq, " views of q_se3 (view-major tokens)");
  TORCH_CHECK_VALUE(D.Vk >= 1 && D.Nk % D.Vk == 0, op, ": Nk = ", D.Nk, " key tokens must split evenly into the ",
                    D.Vk, " views of k_se3 (view-major tokens)");
  check_sizes(op, "q_pos", q_pos, {D.B, D.Nq, 2});
  check_sizes(op, "k_pos", k_pos, {D.B, D.Nk, 2});
  check_sizes(op, "freqs", freqs, {D.F});
  const auto pdt = param_dtype_for(q.scalar_type());
  for (auto [name, t] : {std::pair{"q_se3", &q_se3}, std::pair{"k_se3", &k_se3}, std::pair{"q_so3", &q_so3},
                         std::pair{"k_so3", &k_so3}, std::pair{"q_pos", &q_pos}, std::pair{"k_pos", &k_pos},
                         std::pair{"freqs", &freqs}}) {
    check_dtype(op, name, *t, pdt);
    check_device(op, name, *t, q);
  }
  if (key_mask.has_value()) {
    check_dtype(op, "key_mask", *key_mask, at::kBool);
    check_sizes(op, "key_mask", *key_mask, {D.B, D.Nk});
    check_device(op, "key_mask", *key_mask, q);
    D.has_mask = true;
  }
  return D;
}

inline Dims check_bwd(const char* op, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                      const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const at::Tensor& q_se3,
                      const at::Tensor& k_se3, const at::Tensor& q_so3, const at::Tensor& k_so3,
                      const at::Tensor& q_pos, const at::Tensor& k_pos, const at::Tensor& freqs,
                      c10::IntArrayRef dims, const std::optional<at::Tensor>& key_mask) {
  Dims D = check_fwd(op, q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask);
  check_sizes(op, "grad_out", grad_out, q.sizes());
  check_sizes(op, "out", out, q.sizes());
  check_sizes(op, "lse", lse, {D.B, D.H, D.Nq});
  check_dtype(op, "grad_out", grad_out, q.scalar_type());
  check_dtype(op, "out", out, q.scalar_type());
  check_dtype(op, "lse", lse, param_dtype_for(q.scalar_type()));
  return D;
}

}  // namespace phasor::gta
