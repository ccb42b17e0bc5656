// Every phasor op schema, in one place. Kernels are registered per device in csrc/<system>/.
// Fake (meta) kernels and autograd formulas are registered from Python (phasor/<system>/ops.py).
#include <torch/library.h>

// The library itself; each system adds its ops in a fragment naming the Python module that holds
// their fake kernels, so torch can tell a user which module to import.
TORCH_LIBRARY(phasor, m) {}

// ---- rotating features: rotating-layer epilogue ---------------------------------------------
TORCH_LIBRARY_FRAGMENT(phasor, m) {
  m.set_python_module("phasor.rotating_features.ops");
  // psi [B, n, C, *spatial] = W(z) over the n rotation dims; chi [B, C, *spatial] = W(|z|).
  // chi = None selects the first-layer lift: psi is then [B, 1, C, *spatial] = W(x) for x >= 0,
  // standing for [W(x), 0, ..., 0] with n = rot_bias.size(0), and chi = W(x).
  // Returns out = normalize(psi + rot_bias) * relu(BN(0.5|psi| + 0.5 chi)), mag = that relu term,
  // and the (mean, var) the BatchNorm used (batch statistics when training, running ones otherwise).
  m.def("rot_bn_fwd(Tensor psi, Tensor? chi, Tensor rot_bias, Tensor weight, Tensor bias, "
        "Tensor? running_mean, Tensor? running_var, bool training, float eps) "
        "-> (Tensor out, Tensor mag, Tensor mean, Tensor var)");
  m.def("rot_bn_bwd(Tensor grad_out, Tensor? grad_mag, Tensor psi, Tensor? chi, Tensor rot_bias, "
        "Tensor weight, Tensor bias, Tensor mean, Tensor var, bool training, float eps) "
        "-> (Tensor grad_psi, Tensor grad_chi, Tensor grad_rot_bias, Tensor grad_weight, Tensor grad_bias)");
  // LayerNorm variant for rotating linear layers: psi [B, n, C], chi [B, C]; normalises over C.
  m.def("rot_ln_fwd(Tensor psi, Tensor chi, Tensor rot_bias, Tensor weight, Tensor bias, float eps) "
        "-> (Tensor out, Tensor mag, Tensor mean, Tensor rstd)");
  m.def("rot_ln_bwd(Tensor grad_out, Tensor? grad_mag, Tensor psi, Tensor chi, Tensor rot_bias, "
        "Tensor weight, Tensor bias, Tensor mean, Tensor rstd) "
        "-> (Tensor grad_psi, Tensor grad_chi, Tensor grad_rot_bias, Tensor grad_weight, Tensor grad_bias)");
}

// ---- wave-RNN: whole-sequence circular-convolution recurrence --------------------------------
TORCH_LIBRARY_FRAGMENT(phasor, m) {
  m.set_python_module("phasor.wave_rnn.ops");
  // h_t = act(b[o] + u_t[o, j] + sum_{i, k} W[o, i, k] h_{t-1}[i, (j + k - f/2) mod n]), t = 1..T:
  // u [T, B, c, n] (already projected input), weight [c, c, f] (f odd), bias [c], h0 [B, c, n],
  // activation relu | tanh | identity. Returns every state H [T, B, c, n] (return_all) or h_T [B, c, n].
  m.def("wave_rnn_fwd(Tensor u, Tensor weight, Tensor bias, Tensor h0, str activation, bool return_all) "
        "-> Tensor");
  // Backpropagation through time from all states H (the forward's output) and dL/dH [T, B, c, n].
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
