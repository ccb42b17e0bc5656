// Entry points of the CPU GTA kernels, declared once per instruction-set variant.
#pragma once
#include "gta/gta.h"

#include <optional>
#include <tuple>

namespace phasor::gta {

// The geometry inputs, contiguous, in the parameter dtype.
struct GeoTensors {
  at::Tensor q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs;
};

#define PHASOR_GTA_CPU_ENTRY_POINTS(ISA)                                                                 \
  namespace ISA {                                                                                        \
  std::tuple<at::Tensor, at::Tensor> gta_fwd_cpu(const Dims& D, const at::Tensor& q, const at::Tensor& k, \
                                                 const at::Tensor& v, const GeoTensors& geo,             \
                                                 const std::optional<at::Tensor>& key_mask, double scale, \
                                                 bool v_transform);                                      \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gta_bwd_cpu(                    \
      const Dims& D, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,               \
      const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse, const GeoTensors& geo,          \
      const std::optional<at::Tensor>& key_mask, double scale, bool v_transform);                        \
  }

PHASOR_GTA_CPU_ENTRY_POINTS(base)
PHASOR_GTA_CPU_ENTRY_POINTS(avx2)
PHASOR_GTA_CPU_ENTRY_POINTS(avx512)
PHASOR_GTA_CPU_ENTRY_POINTS(avx512_ymm)  // the AVX-512 build with 32-byte vectors, for head dims below 64

}  // namespace phasor::gta
