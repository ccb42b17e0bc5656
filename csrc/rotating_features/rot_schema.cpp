// Schemas of the rotating-features ops (kernels: rot_epilogue_cpu.cpp, rot_epilogue_cuda.cu).
#include <torch/library.h>

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
