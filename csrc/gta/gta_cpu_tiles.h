// GTA CPU kernels: tile sizes, vectorised exp, and the register-blocked tile products.
// Only gta_cpu_kernels.h includes this, once per instruction set (it defines PHASOR_CPU_ISA).
#pragma once

namespace phasor::gta::PHASOR_CPU_ISA {
namespace {

constexpr int64_t kBQ = 32;  // query rows per work item
constexpr int64_t kBK = 128;  // keys per streamed tile

// exp(x) from arithmetic and bit operations only, so loops over it vectorise under omp simd (libm's
// exp is a scalar call): x = k ln2 + r, |r| <= ln2/2, exp(r) by its Taylor polynomial (degree 7 for
// float, 13 for double: truncation below half an ulp), 2^k assembled in the exponent bits. exp(-inf)
// and anything below the smallest normal result give 0.
template <typename T>
struct ExpTraits;
template <>
struct ExpTraits<float> {
  using I = int32_t;
  static constexpr int kDegree = 7, kMant = 23, kBias = 127;
  static constexpr float kLo = -87.0f, kHi = 88.0f;
  static constexpr float kLn2Hi = 0.693145751953125f, kLn2Lo = 1.428606765330187e-06f;
  static constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  static constexpr float kInv[8] = {0.f, 1.f, 1.f / 2, 1.f / 3, 1.f / 4, 1.f / 5, 1.f / 6, 1.f / 7};
};
template <>
struct ExpTraits<double> {
  using I = int64_t;
  static constexpr int kDegree = 13, kMant = 52, kBias = 1023;
  static constexpr double kLo = -708.0, kHi = 709.0;
  static constexpr double kLn2Hi = 0.6931471803691238, kLn2Lo = 1.9082149292705877e-10;
  static constexpr double kMagic = 6755399441055744.0;  // 1.5 * 2^52
  static constexpr double kInv[14] = {0., 1., 1. / 2, 1. / 3, 1. / 4, 1. / 5, 1. / 6, 1. / 7, 1. / 8, 1. / 9,
                                      1. / 10, 1. / 11, 1. / 12, 1. / 13};
};

template <typename T>
inline T vexp(T x) {
  using E = ExpTraits<T>;
  using I = typename E::I;
  const bool under = !(x >= E::kLo);
  x = x < E::kLo ? E::kLo : (x > E::kHi ? E::kHi : x);
  // round x / ln2 to an integer k by the magic-number trick (no rounding call): k sits in the low
  // mantissa bits of t, which the shift below moves into the exponent field of 2^k
  const T t = x * T(1.4426950408889634) + E::kMagic;
  const T kf = t - E::kMagic;
  const T r = (x - kf * E::kLn2Hi) - kf * E::kLn2Lo;
  T poly = T(1);
  for (int n = E::kDegree; n >= 1; --n) poly = T(1) + poly * r * E::kInv[n];
  I ti;
  std::memcpy(&ti, &t, sizeof(T));
  const I bits = (ti + E::kBias) << E::kMant;
  T scale;
  std::memcpy(&scale, &bits, sizeof(T));
  return under ? T(0) : poly * scale;
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t c = 0; c < n; ++c) acc += a[c] * b[c];
  return acc;
}
template <typename T>
inline void axpy(T a, const T* x, T* y, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += a * x[c];
}

using cpu_vec::kLanes;
using cpu_vec::loadu;
using cpu_vec::storeu;
using cpu_vec::Vec;

// Register blocking of the tile products: more rows per block where there are 32 vector registers.
#ifdef __AVX512F__
constexpr int kDotRows = 6, kCombineRows = 4;
#else
constexpr int kDotRows = 3, kCombineRows = 2;
#endif

// out[r][jb + l] for R rows (R <= kDotRows; rows past nr repeat the last one and are not stored) and
// two vectors of columns. Each element is two partial sums over even and odd channels, added at the
// end: the same order for every element whatever block it falls in, so the backward's logits equal
// the forward's bit for bit, and the pairing keeps long head dims' rounding error near a blocked
// GEMM's (the backward's do~ . v~ - D cancels).
template <typename T, int R>
inline void dot_block(const T* rows, int64_t r0, int64_t nr, const T* colsT, int64_t jb, int64_t d, T* out) {
  constexpr int64_t L = kLanes<T>;
  const T* a[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) a[r] = rows + std::min<int64_t>(r0 + r, nr - 1) * d;
  Vec<T> even[R][2] = {}, odd[R][2] = {};
  int64_t c = 0;
  for (; c + 2 <= d; c += 2) {
    const Vec<T> k0 = loadu(colsT + c * kBK + jb), k1 = loadu(colsT + c * kBK + jb + L);
    const Vec<T> k2 = loadu(colsT + (c + 1) * kBK + jb), k3 = loadu(colsT + (c + 1) * kBK + jb + L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      even[r][0] += a[r][c] * k0;
      even[r][1] += a[r][c] * k1;
      odd[r][0] += a[r][c + 1] * k2;
      odd[r][1] += a[r][c + 1] * k3;
    }
  }
  if (c < d) {
    const Vec<T> k0 = loadu(colsT + c * kBK + jb), k1 = loadu(colsT + c * kBK + jb + L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      even[r][0] += a[r][c] * k0;
      even[r][1] += a[r][c] * k1;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if (r0 + r >= nr) break;
    storeu(out + (r0 + r) * kBK + jb, even[r][0] + odd[r][0]);
    storeu(out + (r0 + r) * kBK + jb + L, even[r][1] + odd[r][1]);
  }
}

// out[r][j] = rows[r] . cols[j] for nr rows against the key tile given transposed (colsT[c][kBK]).
// Columns past nk (up to the tile width) come from stale tile memory and are ignored by the callers.
template <typename T>
inline void tile_dots(const T* rows, int64_t nr, const T* colsT, int64_t nk, int64_t d, T* out) {
  constexpr int64_t L = kLanes<T>;
  static_assert(kBK % (2 * L) == 0, "key tile must be a multiple of two vectors");
  for (int64_t jb = 0; jb < nk; jb += 2 * L)
    for (int64_t r0 = 0; r0 < nr; r0 += kDotRows) dot_block<T, kDotRows>(rows, r0, nr, colsT, jb, d, out);
}

// Coefficients of a combination: coef(o, i) = base[o * row_stride + i * col_stride].
template <typename T>
struct Coef {
  const T* base;
  int64_t row_stride, col_stride;
  T operator()(int64_t o, int64_t i) const { return base[o * row_stride + i * col_stride]; }
};

// acc[o][c] += mul * sum_i coef(o, i) * vecs[i][c] for R output rows (rows past no are computed on the
// last row and not stored) and the NV-vector channel block at c0: each loaded vecs row feeds R rows.
template <typename T, int R, int NV>
inline void combine_block(const Coef<T>& coef, int64_t o0, int64_t no, int64_t n, const T* vecs, int64_t d,
                          int64_t c0, T mul, T* acc) {
  constexpr int64_t L = kLanes<T>;
  int64_t o[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) o[r] = std::min<int64_t>(o0 + r, no - 1);
  Vec<T> a[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) a[r][v] = loadu(acc + o[r] * d + c0 + v * L);
  for (int64_t i = 0; i < n; ++i) {
    const T* vi = vecs + i * d + c0;
    Vec<T> vv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) vv[v] = loadu(vi + v * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const T x = coef(o[r], i) * mul;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) a[r][v] += x * vv[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if (o0 + r >= no) break;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) storeu(acc + o[r] * d + c0 + v * L, a[r][v]);
  }
}

template <typename T, int NV>
inline void combine_columns(const Coef<T>& coef, int64_t no, int64_t n, const T* vecs, int64_t d, int64_t c0, T mul,
                            T* acc) {
  for (int64_t o0 = 0; o0 < no; o0 += kCombineRows)
    combine_block<T, kCombineRows, NV>(coef, o0, no, n, vecs, d, c0, mul, acc);
}

// acc[o][c] += mul * sum_{i < n} coef(o, i) * vecs[i][c] for the no rows of acc ([no][d]): blocks of
// rows x 4 vectors of channels (then 2, then 1 for the rest of the head dim) stay in registers while
// the n vecs rows stream past.
template <typename T>
inline void combine_rows(const Coef<T>& coef, int64_t no, int64_t n, const T* vecs, int64_t d, T mul, T* acc) {
  constexpr int64_t L = kLanes<T>;
  int64_t c0 = 0;
  for (; c0 + 4 * L <= d; c0 += 4 * L) combine_columns<T, 4>(coef, no, n, vecs, d, c0, mul, acc);
  if constexpr (sizeof(Vec<T>) == 64) {  // wide vectors: head dims that are not a multiple of 4 of them
    if (c0 + 2 * L <= d) combine_columns<T, 2>(coef, no, n, vecs, d, c0, mul, acc), c0 += 2 * L;
    if (c0 + L <= d) combine_columns<T, 1>(coef, no, n, vecs, d, c0, mul, acc), c0 += L;
  }
  if (c0 < d)  // the channels past the last whole vector
    for (int64_t o = 0; o < no; ++o)
      for (int64_t i = 0; i < n; ++i) {
        const T x = coef(o, i) * mul;
        if (x != T(0)) axpy(x, vecs + i * d + c0, acc + o * d + c0, d - c0);
      }
}

// dst[c][kBK] = src[j][c] for the nk rows of a key tile
template <typename T>
inline void transpose_tile(const T* src, int64_t nk, int64_t d, T* dst) {
  for (int64_t j = 0; j < nk; ++j)
    for (int64_t c = 0; c < d; ++c) dst[c * kBK + j] = src[j * d + c];
}

// logits of rows qt[0..nq) against keys j0..j0+nk (transposed tile kT; masked keys -inf) into s[nq][kBK]
template <typename T>
inline void tile_logits(const Dims& D, const T* qt, const T* kT, const bool* mask, int64_t nq, int64_t j0,
                        int64_t nk, T* s) {
  tile_dots(qt, nq, kT, nk, D.d, s);
  if (!mask) return;
  const T ninf = -std::numeric_limits<T>::infinity();
  for (int64_t r = 0; r < nq; ++r)
    for (int64_t j = 0; j < nk; ++j)
      if (!mask[j0 + j]) s[r * kBK + j] = ninf;
}

// Every key tile of K~ transposed once ([B*H][tile][d][kBK], columns past the last key zero), so the
// forward's query tiles, which all read every key tile, do not each transpose it again.
template <typename T>
void transpose_key_tiles(const Dims& D, const T* kt, T* ktT) {
  const int64_t d = D.d, nkt = (D.Nk + kBK - 1) / kBK;
  at::parallel_for(0, D.B * D.H * nkt, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / nkt, j0 = (item % nkt) * kBK, nk = std::min(kBK, D.Nk - j0);
      T* dst = ktT + item * d * kBK;
      if (nk < kBK) std::fill(dst, dst + d * kBK, T(0));
      transpose_tile(kt + (bh * D.Nk + j0) * d, nk, d, dst);
    }
  });
}

}  // namespace
}  // namespace phasor::gta::PHASOR_CPU_ISA
