// Low-rank application of the near-global Gaussian sheet, Y = G_r X G_c^T with G = U U^T per axis
// (layer 1 of the cv-RNN: sigma ~ 0.9 of the image, numerical rank ~6 in float and ~16 in double
// whatever the image size). Part of complex_rnn_cpu_kernels.h: included inside its ISA namespace,
// after the cpu_vec names are in scope.
//
// The four stages are small GEMMs over both planes of the complex state at once (the factors are
// real, so one broadcast of a factor entry feeds the real and the imaginary plane):
//   C = U_r^T X   [r_r, Wv]     gemm_tn
//   Z = C U_c     [r_r, r_c]    dot products
//   B = Z U_c^T   [r_r, Wv]     gemm_nn
//   Y = U_r B     [H, Wv]       gemm_nn, rounded to the state dtype
// All arithmetic is in double (also for float states: the three-stage product would otherwise round
// more than the dense filter). The GEMMs keep a block of outputs in registers over the whole
// reduction: the plain row-AXPY form loaded and stored its output row once per FMA, which made the
// pass load/store-bound at about half the FMA rate. Each output is still summed in the reduction's
// order, one FMA per term, so the result has the AXPY form's bits.

// 4 doubles per vector in every build (this kernel's vectors are 32 bytes; see PHASOR_VEC_BYTES).
using DVec = Vec<double>;
constexpr int64_t kDLanes = kLanes<double>;
typedef float Float4 __attribute__((vector_size(4 * sizeof(float))));

inline DVec load_as_double(const double* p) { return loadu(p); }
inline DVec load_as_double(const float* p) {
#if defined(__AVX__)
  return (DVec)_mm256_cvtps_pd(_mm_loadu_ps(p));  // GCC 12 splits the generic conversion into halves
#else
  Float4 f;
  std::memcpy(&f, p, sizeof(f));
  return __builtin_convertvector(f, DVec);
#endif
}
inline void store_rounded(double* p, DVec v) { storeu(p, v); }
inline void store_rounded(float* p, DVec v) {
#if defined(__AVX__)
  _mm_storeu_ps(p, _mm256_cvtpd_ps((__m256d)v));
#else
  const Float4 f = __builtin_convertvector(v, Float4);
  std::memcpy(p, &f, sizeof(f));
#endif
}

// Register blocking: 8 accumulators with 16 vector registers, 16 with AVX-512's 32.
#if defined(__AVX512F__)
constexpr int kRowBlock = 4;
#else
constexpr int kRowBlock = 2;
#endif

// Both planes: out[i][w..] for P rows i0.. and NV vectors at w, = sum_k A[k * lda + i] * X[k * xs + w..]
// over k < K (A read transposed).
template <int P, int NV, typename TX>
inline void gemm_tn_block(const double* A, int64_t lda, int64_t i0, const TX* xr, const TX* xi, int64_t xs, int64_t K,
                          int64_t w, double* outr, double* outi, int64_t os) {
  DVec ar[P][NV], ai[P][NV];
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) ar[p][v] = ai[p][v] = DVec{};
  for (int64_t k = 0; k < K; ++k) {
    DVec br[NV], bi[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      br[v] = load_as_double(xr + k * xs + w + v * kDLanes);
      bi[v] = load_as_double(xi + k * xs + w + v * kDLanes);
    }
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const DVec a = splat(A[k * lda + i0 + p]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        ar[p][v] += a * br[v];
        ai[p][v] += a * bi[v];
      }
    }
  }
#pragma GCC unroll 4
  for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      storeu(outr + (i0 + p) * os + w + v * kDLanes, ar[p][v]);
      storeu(outi + (i0 + p) * os + w + v * kDLanes, ai[p][v]);
    }
}

// NPL planes (1 or 2, sharing A): out[i][w..] for P rows i0.. and NV vectors at w,
// = sum_k A[i * lda + k] * M[k * ms + w..] over k < K, rounded to the output dtype.
template <int NPL, int P, int NV, typename TO>
inline void gemm_nn_block(const double* A, int64_t lda, int64_t i0, const double* const* m, int64_t ms, int64_t K,
                          int64_t w, TO* const* out, int64_t os) {
  DVec acc[NPL][P][NV];
#pragma GCC unroll 4
  for (int c = 0; c < NPL; ++c)
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[c][p][v] = DVec{};
  for (int64_t k = 0; k < K; ++k) {
    DVec b[NPL][NV];
#pragma GCC unroll 4
    for (int c = 0; c < NPL; ++c)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) b[c][v] = loadu(m[c] + k * ms + w + v * kDLanes);
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const DVec a = splat(A[(i0 + p) * lda + k]);
#pragma GCC unroll 4
      for (int c = 0; c < NPL; ++c)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[c][p][v] += a * b[c][v];
    }
  }
#pragma GCC unroll 4
  for (int c = 0; c < NPL; ++c)
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) store_rounded(out[c] + (i0 + p) * os + w + v * kDLanes, acc[c][p][v]);
}

// Walks an [I, Wv] output (Wv a multiple of kDLanes) in register blocks: rows kRowBlock at a time,
// then 2, then 1; columns 2 vectors at a time, then 1. block(P, NV, i0, w) runs one block.
template <int P, typename Block>
inline void for_each_column_block(int64_t i0, int64_t Wv, Block& block) {
  int64_t w = 0;
  for (; w + 2 * kDLanes <= Wv; w += 2 * kDLanes) block(std::integral_constant<int, P>{}, std::integral_constant<int, 2>{}, i0, w);
  for (; w < Wv; w += kDLanes) block(std::integral_constant<int, P>{}, std::integral_constant<int, 1>{}, i0, w);
}
template <typename Block>
inline void for_each_block(int64_t I, int64_t Wv, Block&& block) {
  int64_t i = 0;
  for (; i + kRowBlock <= I; i += kRowBlock) for_each_column_block<kRowBlock>(i, Wv, block);
  if constexpr (kRowBlock > 2)
    for (; i + 2 <= I; i += 2) for_each_column_block<2>(i, Wv, block);
  for (; i < I; ++i) for_each_column_block<1>(i, Wv, block);
}

// One axis factor G = U U^T: U [n][r] (each eigenvector scaled by its eigenvalue's square root) and
// U^T [r][npad] with zero lanes up to npad (a multiple of the vector width).
struct AxisFactor {
  int64_t n = 0, r = 0;
  std::vector<double> U;
  std::vector<double> Ut;
};

template <typename T>
AxisFactor axis_factor(int64_t n, int64_t npad, double sigma) {
  // eigenpairs below the rounding of the dense product are dropped: 1e-17 of the largest in double,
  // 1e-9 in float (next to the band's own 1e-20 / 1e-12 tap cut-off)
  GaussianAxisFactor g = gaussian_axis_factor(n, sigma, sizeof(T) == 8 ? 1e-17 : 1e-9);
  AxisFactor f;
  f.n = n;
  f.r = g.r;
  f.Ut.assign(f.r * npad, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t q = 0; q < f.r; ++q) f.Ut[q * npad + i] = g.U[i * f.r + q];
  f.U = std::move(g.U);
  return f;
}

// Scratch of the low-rank product, per thread: C and B [2][r_r][Wv] (real, imaginary), Z [2][r_r][r_c].
struct LowRankScratch {
  std::vector<double> C, Z, B;
  LowRankScratch() = default;
  LowRankScratch(const AxisFactor& fr, const AxisFactor& fc, int64_t Wv)
      : C(2 * fr.r * Wv), Z(2 * fr.r * fc.r), B(2 * fr.r * Wv) {}
};

// Y = G_r X G_c^T for both planes of one image (X rows at x*, stride xs; Y rows of Wv).
template <typename T>
void apply_low_rank(const AxisFactor& fr, const AxisFactor& fc, const T* xr, const T* xi, int64_t xs, int64_t H,
                    int64_t Wv, LowRankScratch& s, T* yr, T* yi) {
  const int64_t rr = fr.r, rc = fc.r;
  double *Cr = s.C.data(), *Ci = Cr + rr * Wv, *Zr = s.Z.data(), *Zi = Zr + rr * rc;
  double *Br = s.B.data(), *Bi = Br + rr * Wv;
  const double *Ur = fr.U.data(), *Uct = fc.Ut.data();
  for_each_block(rr, Wv, [&](auto P, auto NV, int64_t i0, int64_t w) {
    gemm_tn_block<P(), NV()>(Ur, rr, i0, xr, xi, xs, H, w, Cr, Ci, Wv);
  });
  for (int64_t p = 0; p < rr; ++p)
    for (int64_t q = 0; q < rc; ++q) {
      const double *cr = Cr + p * Wv, *ci = Ci + p * Wv, *uq = Uct + q * Wv;
      double accr = 0, acci = 0;
#pragma omp simd reduction(+ : accr, acci)
      for (int64_t w = 0; w < Wv; ++w) {
        accr += cr[w] * uq[w];
        acci += ci[w] * uq[w];
      }
      Zr[p * rc + q] = accr;
      Zi[p * rc + q] = acci;
    }
  // B = Z U_c^T for both planes: [Zr; Zi] and [Br; Bi] are contiguous, so one plane of 2 r_r rows
  const double* m1[1] = {Uct};
  double* b1[1] = {Br};
  for_each_block(2 * rr, Wv, [&](auto P, auto NV, int64_t i0, int64_t w) {
    gemm_nn_block<1, P(), NV()>(Zr, rc, i0, m1, Wv, rc, w, b1, Wv);
  });
  const double* m2[2] = {Br, Bi};
  T* y2[2] = {yr, yi};
  for_each_block(H, Wv, [&](auto P, auto NV, int64_t i0, int64_t w) {
    gemm_nn_block<2, P(), NV()>(Ur, rr, i0, m2, Wv, rr, w, y2, Wv);
  });
}
