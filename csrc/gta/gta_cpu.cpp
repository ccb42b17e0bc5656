// CPU registration of the GTA attention ops: validation, contiguity, and the kernel build for the
// instruction set chosen at run time (common/cpu_isa.h).
#include "common/cpu_isa.h"
#include "gta/gta_cpu_entry.h"

#include <torch/library.h>

namespace phasor::gta {
namespace {

// bf16/fp16 are storage dtypes: the kernels compute in float32 (geometry and lse are float32, as on CUDA).
void check_cpu_dtype(const char* op, const at::Tensor& q) {
  const auto t = q.scalar_type();
  TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf, op,
                   ": q must be float32, float64, bfloat16 or float16 on CPU, got ", t);
}

GeoTensors geo_of(const at::Tensor& q_se3, const at::Tensor& k_se3, const at::Tensor& q_so3, const at::Tensor& k_so3,
                  const at::Tensor& q_pos, const at::Tensor& k_pos, const at::Tensor& freqs) {
  return {q_se3.contiguous(), k_se3.contiguous(), q_so3.contiguous(), k_so3.contiguous(),
          q_pos.contiguous(), k_pos.contiguous(), freqs.contiguous()};
}

// The kernel build for the active instruction set; on AVX-512, the 32-byte-vector build for head dims
// below 64 and for short key sequences (gta_cpu_ymm_avx512.cpp says why).
template <typename F>
F* pick_build(F* base, F* avx2, F* avx512, F* avx512_ymm, const Dims& D) {
  F* f = for_active_isa(base, avx2, avx512);
  return f == avx512 && (D.d < 64 || D.Nk < 512) ? avx512_ymm : f;
}
#define PHASOR_GTA_KERNEL(fn, D) pick_build(&base::fn, &avx2::fn, &avx512::fn, &avx512_ymm::fn, D)

std::optional<at::Tensor> contiguous_mask(const std::optional<at::Tensor>& m) {
  return m ? std::optional<at::Tensor>(m->contiguous()) : std::nullopt;
}

std::tuple<at::Tensor, at::Tensor> fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& q_se3, const at::Tensor& k_se3, const at::Tensor& q_so3,
                                       const at::Tensor& k_so3, const at::Tensor& q_pos, const at::Tensor& k_pos,
                                       const at::Tensor& freqs, c10::IntArrayRef dims,
                                       const std::optional<at::Tensor>& key_mask, double scale, bool v_transform) {
  const char* op = "phasor::gta_attention_fwd";
  const Dims D = check_fwd(op, q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask);
  check_cpu_dtype(op, q);
  return PHASOR_GTA_KERNEL(gta_fwd_cpu, D)(
      D, q.contiguous(), k.contiguous(), v.contiguous(), geo_of(q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs),
      contiguous_mask(key_mask), scale, v_transform);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& q_se3, const at::Tensor& k_se3, const at::Tensor& q_so3,
    const at::Tensor& k_so3, const at::Tensor& q_pos, const at::Tensor& k_pos, const at::Tensor& freqs,
    c10::IntArrayRef dims, const std::optional<at::Tensor>& key_mask, double scale, bool v_transform) {
  const char* op = "phasor::gta_attention_bwd";
  const Dims D = check_bwd(op, grad_out, q, k, v, out, lse, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims,
                           key_mask);
  check_cpu_dtype(op, q);
  return PHASOR_GTA_KERNEL(gta_bwd_cpu, D)(
      D, grad_out.contiguous(), q.contiguous(), k.contiguous(), v.contiguous(), out.contiguous(), lse.contiguous(),
      geo_of(q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs), contiguous_mask(key_mask), scale, v_transform);
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CPU, m) {
  m.impl("gta_attention_fwd", &fwd);
  m.impl("gta_attention_bwd", &bwd);
}

}  // namespace phasor::gta
