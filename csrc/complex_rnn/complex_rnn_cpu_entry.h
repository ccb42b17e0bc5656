// Entry points of the CPU cv-RNN kernels, declared once per instruction-set variant.
#pragma once
#include "complex_rnn/complex_rnn.h"

namespace phasor::cvrnn {

#define PHASOR_CVRNN_CPU_ENTRY_POINTS(ISA)                                                                 \
  namespace ISA {                                                                                          \
  at::Tensor cvrnn_run_cpu(const at::Tensor& x0, const at::Tensor& omega, const c10::optional<at::Tensor>& mask, \
                           double alpha, double sigma, int64_t steps, bool renorm, int64_t save_start,    \
                           int64_t save_stop, bool save_phase);                                           \
  at::Tensor cvrnn_run_dense_cpu(const at::Tensor& x0, const at::Tensor& omega, const at::Tensor& K,        \
                                 const c10::optional<at::Tensor>& mask, int64_t steps, bool renorm,         \
                                 int64_t save_start, int64_t save_stop, bool save_phase);                   \
  }

PHASOR_CVRNN_CPU_ENTRY_POINTS(base)
PHASOR_CVRNN_CPU_ENTRY_POINTS(avx2)
PHASOR_CVRNN_CPU_ENTRY_POINTS(avx512)

}  // namespace phasor::cvrnn
