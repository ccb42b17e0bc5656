// Schemas of the GTA attention ops (kernels: gta_cpu.cpp, gta_cuda.cu). Math: gta.h.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(phasor, m) {
  m.set_python_module("phasor.gta.ops");
  // O = P Attn(P^T Q, P^-1 K, P^-1 V) with per-token block-diagonal P (triv | se3 4x4 | so3 8x8 | so2 2x2).
  // q [B,H,Nq,d], k/v [B,H,Nk,d]; q_se3 = P [B,Vq,4,4], k_se3 = P^-1 [B,Vk,4,4]; q_so3 = D [B,Vq,8,8],
  // k_so3 = D^-1 [B,Vk,8,8]; q_pos [B,Nq,2], k_pos [B,Nk,2], freqs [F]; dims = (triv, se3, so3, so2);
  // key_mask [B,Nk] bool (true = attend). Returns out [B,H,Nq,d] and the log-sum-exp lse [B,H,Nq].
  m.def("gta_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor q_se3, Tensor k_se3, Tensor q_so3, "
        "Tensor k_so3, Tensor q_pos, Tensor k_pos, Tensor freqs, int[] dims, Tensor? key_mask, float scale, "
        "bool v_transform) -> (Tensor out, Tensor lse)");
  // Recomputation backward from (out, lse): grads of q, k, v and of the SE(3) blocks q_se3, k_se3
  // (the SO(3) and SO(2) parts are constants, as in the official code).
  m.def("gta_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor q_se3, Tensor k_se3, Tensor q_so3, Tensor k_so3, Tensor q_pos, Tensor k_pos, Tensor freqs, "
        "int[] dims, Tensor? key_mask, float scale, bool v_transform) -> (Tensor grad_q, Tensor grad_k, "
        "Tensor grad_v, Tensor grad_q_se3, Tensor grad_k_se3)");
}
