// Complex-valued oscillator network (cv-RNN, Liboni et al. 2023): argument validation and sizes,
// shared by the CPU and CUDA kernels.
//
//   X_{t+1} = m * (i * omega * X_t + alpha * G_r (m * X_t) G_c^T),   G_a[p, q] = exp(-((p-q)/N_a)^2 / (2 s^2))
//
// i.e. the dense Gaussian-sheet coupling K = alpha * kron(G_r, G_c) over row-major pixels, applied
// separably. Layouts: x0 / omega / mask [B, H, W] (dense op: [B, n]), output [B, T, H, W] ([B, T, n]).
#pragma once
#include "common/checks.h"

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <vector>

namespace phasor::cvrnn {

struct Dims {
  int64_t B = 0, H = 0, W = 0;     // dense op: H = 1, W = n
  int64_t steps = 0, start = 0, stop = 0;
  int64_t T() const { return stop - start; }
  int64_t HW() const { return H * W; }
};

inline at::ScalarType real_dtype_of(at::ScalarType c) {
  return c == at::kComplexDouble ? at::kDouble : at::kFloat;
}

inline void check_complex_state(const char* op, const at::Tensor& x0) {
  TORCH_CHECK_TYPE(x0.scalar_type() == at::kComplexFloat || x0.scalar_type() == at::kComplexDouble, op,
                   ": x0 must be a complex64 or complex128 tensor, got ", x0.scalar_type());
}

// omega (and mask) have x0's shape; omega the matching real dtype, mask bool; all on x0's device.
inline void check_node_inputs(const char* op, const at::Tensor& x0, const at::Tensor& omega,
                              const c10::optional<at::Tensor>& mask) {
  check_sizes(op, "omega", omega, x0.sizes());
  check_dtype(op, "omega", omega, real_dtype_of(x0.scalar_type()));
  check_device(op, "omega", omega, x0);
  if (mask.has_value()) {
    check_sizes(op, "mask", *mask, x0.sizes());
    check_dtype(op, "mask", *mask, at::kBool);
    check_device(op, "mask", *mask, x0);
  }
}

inline void check_window(const char* op, Dims& d, int64_t steps, int64_t start, int64_t stop) {
  TORCH_CHECK_VALUE(steps >= 0, op, ": steps must be >= 0, got ", steps);
  TORCH_CHECK_VALUE(0 <= start && start <= stop && stop <= steps + 1, op,
                    ": the save window must satisfy 0 <= save_start <= save_stop <= steps + 1 = ", steps + 1,
                    ", got save_start = ", start, ", save_stop = ", stop);
  d.steps = steps, d.start = start, d.stop = stop;
}

inline Dims check_run(const char* op, const at::Tensor& x0, const at::Tensor& omega,
                      const c10::optional<at::Tensor>& mask, double alpha, double sigma, int64_t steps,
                      int64_t start, int64_t stop) {
  check_complex_state(op, x0);
  check_dim(op, "x0", x0, 3, "[B, H, W]");
  check_node_inputs(op, x0, omega, mask);
  TORCH_CHECK_VALUE(std::isfinite(sigma) && sigma > 0, op, ": sigma must be a finite number > 0, got ", sigma);
  TORCH_CHECK_VALUE(std::isfinite(alpha), op, ": alpha must be finite, got ", alpha);
  Dims d;
  d.B = x0.size(0), d.H = x0.size(1), d.W = x0.size(2);
  check_window(op, d, steps, start, stop);
  return d;
}

inline Dims check_run_dense(const char* op, const at::Tensor& x0, const at::Tensor& omega, const at::Tensor& K,
                            const c10::optional<at::Tensor>& mask, int64_t steps, int64_t start, int64_t stop) {
  check_complex_state(op, x0);
  check_dim(op, "x0", x0, 2, "[B, n]");
  check_node_inputs(op, x0, omega, mask);
  check_sizes(op, "K", K, {x0.size(1), x0.size(1)});
  check_dtype(op, "K", K, real_dtype_of(x0.scalar_type()));
  check_device(op, "K", K, x0);
  Dims d;
  d.B = x0.size(0), d.H = 1, d.W = x0.size(1);
  check_window(op, d, steps, start, stop);
  return d;
}

// Taps of G beyond this radius (pixels) are below `tol` relative to the centre tap (1) and are
// dropped: exp(-(r / N)^2 / (2 sigma^2)) < tol for r > N sigma sqrt(2 ln(1/tol)). tol is far below
// the dtype's rounding (1e-20 for double, 1e-12 for float), so the result equals the full G's.
inline int64_t band_radius(int64_t N, double sigma, bool is_double) {
  const double tol = is_double ? 1e-20 : 1e-12;
  const double r = std::ceil(double(N) * sigma * std::sqrt(2.0 * std::log(1.0 / tol)));
  return r >= double(N - 1) ? (N > 0 ? N - 1 : 0) : int64_t(r);
}

// Tap k >= 0 of the axis coupling G (distance k pixels on an axis of N pixels).
inline double gaussian_tap(int64_t k, int64_t N, double sigma) {
  const double d = double(k) / double(N);
  return std::exp(-d * d / (2.0 * sigma * sigma));
}

// Low-rank form of one axis factor of the sheet, G = U U^T (G is a Gaussian kernel matrix,
// symmetric positive semidefinite): eigh in double, the eigenpairs above rel_tol * lambda_max kept,
// each eigenvector scaled by the square root of its eigenvalue. One definition for the CPU kernels
// and the CUDA host code (complex_rnn_lowrank.cpp), so both devices use the same factors.
struct GaussianAxisFactor {
  int64_t n = 0, r = 0;
  std::vector<double> U;  // [n][r]
};
GaussianAxisFactor gaussian_axis_factor(int64_t n, double sigma, double rel_tol);

}  // namespace phasor::cvrnn
