// CPU registration of the wave-RNN ops: each call goes to the kernel build for the instruction
// set chosen at run time (common/cpu_isa.h).
#include "common/cpu_isa.h"
#include "wave_rnn/wave_rnn_cpu_entry.h"

#include <torch/library.h>

namespace phasor::wave {
namespace {

at::Tensor fwd(const at::Tensor& u, const at::Tensor& w, const at::Tensor& b, const at::Tensor& h0,
               c10::string_view act, bool return_all) {
  auto f = PHASOR_ISA_KERNEL(wave_rnn_fwd_cpu);
  return f(u, w, b, h0, act, return_all);
}

at::Tensor proj_fwd(const at::Tensor& x, const at::Tensor& V, const at::Tensor& bV, const at::Tensor& w,
                    const at::Tensor& b, const at::Tensor& h0, c10::string_view act, bool return_all) {
  auto f = PHASOR_ISA_KERNEL(wave_rnn_proj_fwd_cpu);
  return f(x, V, bV, w, b, h0, act, return_all);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bwd(const at::Tensor& gH, const at::Tensor& H,
                                                               const at::Tensor& h0, const at::Tensor& w,
                                                               c10::string_view act) {
  auto f = PHASOR_ISA_KERNEL(wave_rnn_bwd_cpu);
  return f(gH, H, h0, w, act);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> proj_bwd(
    const at::Tensor& gH, const at::Tensor& H, const at::Tensor& x, const at::Tensor& V, const at::Tensor& h0,
    const at::Tensor& w, c10::string_view act) {
  auto f = PHASOR_ISA_KERNEL(wave_rnn_proj_bwd_cpu);
  return f(gH, H, x, V, h0, w, act);
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CPU, m) {
  m.impl("wave_rnn_fwd", &fwd);
  m.impl("wave_rnn_proj_fwd", &proj_fwd);
  m.impl("wave_rnn_bwd", &bwd);
  m.impl("wave_rnn_proj_bwd", &proj_bwd);
}

}  // namespace phasor::wave
