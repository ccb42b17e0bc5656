// CPU registration of the cv-RNN ops: each call goes to the kernel build for the instruction set
// chosen at run time (common/cpu_isa.h).
#include "common/cpu_isa.h"
#include "complex_rnn/complex_rnn_cpu_entry.h"

#include <torch/library.h>

namespace phasor::cvrnn {
namespace {

at::Tensor run(const at::Tensor& x0, const at::Tensor& omega, const c10::optional<at::Tensor>& mask, double alpha,
               double sigma, int64_t steps, bool renorm, int64_t start, int64_t stop, bool save_phase) {
  auto f = PHASOR_ISA_KERNEL(cvrnn_run_cpu);
  return f(x0, omega, mask, alpha, sigma, steps, renorm, start, stop, save_phase);
}

at::Tensor run_dense(const at::Tensor& x0, const at::Tensor& omega, const at::Tensor& K,
                     const c10::optional<at::Tensor>& mask, int64_t steps, bool renorm, int64_t start, int64_t stop,
                     bool save_phase) {
  auto f = PHASOR_ISA_KERNEL(cvrnn_run_dense_cpu);
  return f(x0, omega, K, mask, steps, renorm, start, stop, save_phase);
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CPU, m) {
  m.impl("cvrnn_run", &run);
  m.impl("cvrnn_run_dense", &run_dense);
}

}  // namespace phasor::cvrnn
