// Schemas of the wave-RNN ops (kernels: wave_rnn_cpu.cpp, wave_rnn_cuda.cu).
#include <torch/library.h>

// ---- wave-RNN: whole-sequence circular-convolution recurrence --------------------------------
TORCH_LIBRARY_FRAGMENT(phasor, m) {
  m.set_python_module("phasor.wave_rnn.ops");
  // h_t = act(b[o] + u_t[o, j] + sum_{i, k} W[o, i, k] h_{t-1}[i, (j + k - f/2) mod n]), t = 1..T:
  // u [T, B, c, n] (already projected input), weight [c, c, f] (f odd), bias [c], h0 [B, c, n],
  // activation relu | tanh | identity. Returns every state H [T, B, c, n] (return_all) or h_T [B, c, n].
  m.def("wave_rnn_fwd(Tensor u, Tensor weight, Tensor bias, Tensor h0, str activation, bool return_all) "
        "-> Tensor");
  // Backpropagation through time from all states H (the forward's output) and dL/dH [T, B, c, n], or
  // dL/dh_T [B, c, n] alone (the other states' gradients zero: training on the last state).
  m.def("wave_rnn_bwd(Tensor grad_H, Tensor H, Tensor h0, Tensor weight, str activation) "
        "-> (Tensor grad_u, Tensor grad_weight, Tensor grad_bias, Tensor grad_h0)");
  // The same recurrence with the input projection inside: u_t = x_t V^T + bV viewed as [B, c, n],
  // for tiny inputs (x [T, B, n_inp], n_inp <= 16; V [c*n, n_inp], bV [c*n]), so U never exists.
  m.def("wave_rnn_proj_fwd(Tensor x, Tensor V, Tensor bV, Tensor weight, Tensor bias, Tensor h0, "
        "str activation, bool return_all) -> Tensor");
  m.def("wave_rnn_proj_bwd(Tensor grad_H, Tensor H, Tensor x, Tensor V, Tensor h0, Tensor weight, "
        "str activation) -> (Tensor grad_x, Tensor grad_V, Tensor grad_bV, Tensor grad_weight, "
        "Tensor grad_bias, Tensor grad_h0)");
}
