// Entry points of the CPU wave-RNN kernels, declared once per instruction-set variant.
#pragma once
#include "wave_rnn/wave_rnn.h"

#include <tuple>

namespace phasor::wave {

#define PHASOR_WAVE_CPU_ENTRY_POINTS(ISA)                                                              \
  namespace ISA {                                                                                      \
  at::Tensor wave_rnn_fwd_cpu(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,   \
                              const at::Tensor& h0, c10::string_view activation, bool return_all);     \
  at::Tensor wave_rnn_proj_fwd_cpu(const at::Tensor& x, const at::Tensor& V, const at::Tensor& bV,     \
                                   const at::Tensor& weight, const at::Tensor& bias,                   \
                                   const at::Tensor& h0, c10::string_view activation,                  \
                                   bool return_all);                                                   \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> wave_rnn_bwd_cpu(                         \
      const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& h0, const at::Tensor& weight,   \
      c10::string_view activation);                                                                    \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>                   \
  wave_rnn_proj_bwd_cpu(const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& x,            \
                        const at::Tensor& V, const at::Tensor& h0, const at::Tensor& weight,           \
                        c10::string_view activation);                                                  \
  }

PHASOR_WAVE_CPU_ENTRY_POINTS(base)
PHASOR_WAVE_CPU_ENTRY_POINTS(avx2)
PHASOR_WAVE_CPU_ENTRY_POINTS(avx512)

}  // namespace phasor::wave
