// GTA CPU kernels: the 4x4 SE(3) block gradients (sums of outer products, in double) and P^-1.
// Only gta_cpu_kernels.h includes this, once per instruction set (it defines PHASOR_CPU_ISA).
#pragma once

namespace phasor::gta::PHASOR_CPU_ISA {
namespace {

using Double4 = double __attribute__((vector_size(32)));

template <typename T>
inline Double4 load4(const T* p) {
  return Double4{double(p[0]), double(p[1]), double(p[2]), double(p[3])};
}

// sum over heads, tokens of the view and 4-chunks of a[r] * b[c] (the 4x4 outer products of one site),
// in double; acc[r] is row r. With b_map, b's chunks are first mapped by it (4 columns, b_map[c] is
// column c): the o~ = P^-1 O of the output's SE(3) channels, recovered from O instead of recomputed.
// a and b may differ in dtype (a bf16 input against a float gradient).
template <typename A, typename B>
inline void add_outer4(const Dims& D, const A* a, const B* b, int64_t bb, int64_t N, int64_t t0, int64_t t1,
                       Double4* acc, const Double4* b_map = nullptr) {
  for (int64_t h = 0; h < D.H; ++h)
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t off = ((bb * D.H + h) * N + t) * D.d + D.triv;
      for (int64_t ch = 0; ch < D.se3; ch += 4) {
        const A* ar = a + off + ch;
        const B* br = b + off + ch;
        Double4 bc = load4(br);
        if (b_map)
          bc = b_map[0] * double(br[0]) + b_map[1] * double(br[1]) + b_map[2] * double(br[2]) +
               b_map[3] * double(br[3]);
#pragma GCC unroll 4
        for (int r = 0; r < 4; ++r) acc[r] += double(ar[r]) * bc;
      }
    }
}

template <typename T>
inline void store_outer4(const Double4* acc, T* out) {
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) out[r * 4 + c] = T(acc[r][c]);
}

// Columns of the inverse of the 4x4 row-major m (Gauss-Jordan with partial pivoting, in double); false
// when m is singular to working precision.
template <typename T>
bool inverse4_columns(const T* m, Double4* cols) {
  double a[4][8];
  double norm = 0;
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) {
      a[r][c] = double(m[r * 4 + c]);
      a[r][4 + c] = r == c ? 1.0 : 0.0;
      norm = std::max(norm, std::abs(a[r][c]));
    }
  for (int c = 0; c < 4; ++c) {
    int piv = c;
    for (int r = c + 1; r < 4; ++r)
      if (std::abs(a[r][c]) > std::abs(a[piv][c])) piv = r;
    if (!(std::abs(a[piv][c]) > 1e-10 * norm)) return false;
    if (piv != c)
      for (int k = 0; k < 8; ++k) std::swap(a[c][k], a[piv][k]);
    const double inv = 1.0 / a[c][c];
    for (int k = 0; k < 8; ++k) a[c][k] *= inv;
    for (int r = 0; r < 4; ++r)
      if (r != c) {
        const double f = a[r][c];
        for (int k = 0; k < 8; ++k) a[r][k] -= f * a[c][k];
      }
  }
  for (int c = 0; c < 4; ++c) cols[c] = Double4{a[0][4 + c], a[1][4 + c], a[2][4 + c], a[3][4 + c]};
  return true;
}

// Columns of P^-1 for every query view, if every P is invertible (then the backward recovers o~ from O
// and skips recomputing P V~); empty otherwise.
template <typename T>
std::vector<Double4> query_se3_inverses(const Dims& D, const T* q_se3) {
  std::vector<Double4> cols(D.B * D.Vq * 4);
  for (int64_t bv = 0; bv < D.B * D.Vq; ++bv)
    if (!inverse4_columns(q_se3 + bv * 16, cols.data() + bv * 4)) return {};
  return cols;
}

}  // namespace
}  // namespace phasor::gta::PHASOR_CPU_ISA
