// Schemas of the complex-valued oscillator network ops (kernels: complex_rnn_cpu.cpp,
// complex_rnn_cuda.cu). Both are forward-only: the network has fixed weights.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(phasor, m) {
  m.set_python_module("phasor.complex_rnn.ops");
  // S = steps updates of X <- m * (i * omega * X + alpha * G_r (m * X) G_c^T) over images
  // x0 [B, H, W] (complex64 | complex128), omega [B, H, W] (the matching real dtype), mask [B, H, W]
  // bool (True = node keeps its coupling; None = all), G_a[p, q] = exp(-((p - q) / N_a)^2 / (2 sigma^2)).
  // renorm: divide each image by its max |x| after every update (a positive scalar: phases unchanged).
  // Returns samples t = save_start .. save_stop - 1 (sample t = state after t updates, 0 <= start <=
  // stop <= steps + 1) as [B, T, H, W]: phases (real dtype) when save_phase, else complex states.
  m.def("cvrnn_run(Tensor x0, Tensor omega, Tensor? mask, float alpha, float sigma, int steps, bool renorm, "
        "int save_start, int save_stop, bool save_phase) -> Tensor");
  // The same recurrence with any real coupling matrix K [n, n] over x0 [B, n]: x <- m * (i*omega*x + K (m*x)).
  m.def("cvrnn_run_dense(Tensor x0, Tensor omega, Tensor K, Tensor? mask, int steps, bool renorm, "
        "int save_start, int save_stop, bool save_phase) -> Tensor");
}
