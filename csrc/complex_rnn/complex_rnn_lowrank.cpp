// Low-rank factor of one axis of the Gaussian sheet (complex_rnn.h: gaussian_axis_factor), shared by
// the CPU kernels and the CUDA host code so both run the near-global coupling with the same factors.
#include "complex_rnn/complex_rnn.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/linalg_eigh.h>

#include <cmath>

namespace phasor::cvrnn {

GaussianAxisFactor gaussian_axis_factor(int64_t n, double sigma, double rel_tol) {
  auto G = at::empty({n, n}, at::TensorOptions().dtype(at::kDouble));
  double* g = G.mutable_data_ptr<double>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < n; ++j) g[i * n + j] = gaussian_tap(i > j ? i - j : j - i, n, sigma);
  auto [lam, V] = at::linalg_eigh(G);  // ascending eigenvalues
  const double* l = lam.const_data_ptr<double>();
  const double tol = rel_tol * l[n - 1];
  GaussianAxisFactor f;
  f.n = n;
  int64_t first = n;
  while (first > 0 && l[first - 1] > tol) --first;
  f.r = n - first;
  f.U.assign(n * f.r, 0.0);
  const auto Vc = V.contiguous();
  const double* v = Vc.const_data_ptr<double>();  // column k = eigenvector k
  for (int64_t q = 0; q < f.r; ++q) {
    const double sq = std::sqrt(l[first + q]);
    for (int64_t i = 0; i < n; ++i) f.U[i * f.r + q] = v[i * n + first + q] * sq;
  }
  return f;
}

}  // namespace phasor::cvrnn
