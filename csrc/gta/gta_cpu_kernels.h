// CPU kernels of GTA attention, forward and recomputation backward. Compiled once per instruction set
// (gta_cpu_{base,avx2,avx512}.cpp define PHASOR_CPU_ISA); gta_cpu.cpp picks one at run time. Math: gta.h.
//
// Forward: K and V are transformed once per (batch, head) into scratch buffers ([B,H,Nk,d], O(N) memory;
// every query tile reuses them), then threads take (batch, head, query tile) items: the Q tile is
// transformed in the prologue, key tiles are streamed with an online softmax (the Nq x Nk scores never
// exist), and P is applied to the normalised output in the epilogue.
// Backward (FlashAttention-2 recomputation from lse): with at least one (batch, head) per thread, one
// pass over key tiles accumulates dK~, dV~, dQ~; otherwise one pass over key tiles gives dK~, dV~ and one
// over query tiles dQ~; then per (batch, view) the 4x4 gradients are reduced in a fixed order and the
// transposed transforms map dQ~, dK~, dV~ back. The SE(3) gradient's o~ (the output before P) is P^-1 O;
// only where a query block is singular is it recomputed as P V~ in the tile passes. No atomics, so the
// results do not depend on the thread count. Scratch buffers come from the thread's CpuScratch block.
#include "gta/gta_cpu_entry.h"

#include "common/cpu_scratch.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#ifndef PHASOR_CPU_ISA
#error "define PHASOR_CPU_ISA (the namespace of this instruction-set variant) before including"
#endif

// The base build passes 32-byte vectors between inline helpers in two SSE halves; GCC warns that this
// differs from the AVX calling convention, which no caller outside this file ever sees.
#pragma GCC diagnostic ignored "-Wpsabi"

// 32-byte vectors in every build (the tiles are sized for them; an AVX-512 build still gains its
// 32 registers and masked instructions).
#define PHASOR_VEC_BYTES 32
#include "common/cpu_vec.h"

namespace phasor::gta::PHASOR_CPU_ISA {
namespace {

constexpr int64_t kBQ = 32;  // query rows per work item
constexpr int64_t kBK = 128;  // keys per streamed tile

// Geometry of one call: the SE(3) and SO(3) blocks per view and, per token, the cosines and sines of
// its SO(2) angles (q_cs [B, Nq, so2/2, 2], k_cs [B, Nk, so2/2, 2]: computed once per call by
// so2_tables, where every head and each of q, k, v and the output would otherwise recompute them).
template <typename T>
struct Geo {
  const T *q_se3, *k_se3, *q_so3, *k_so3, *q_cs, *k_cs;
};

// cos and sin of pos[p & 1] * freqs[p >> 1] for every token and 2x2 block p (the angle with sign +1;
// sign -1 only flips the sine, exactly).
template <typename T>
std::vector<T> so2_tables(const Dims& D, const T* pos, const T* freqs, int64_t tokens) {
  const int64_t pairs = D.so2 / 2;
  std::vector<T> cs(tokens * pairs * 2);
  at::parallel_for(0, tokens, 256, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t p = 0; p < pairs; ++p) {
        const T phi = pos[t * 2 + (p & 1)] * freqs[p >> 1];
        cs[(t * pairs + p) * 2] = std::cos(phi);
        cs[(t * pairs + p) * 2 + 1] = std::sin(phi);
      }
  });
  return cs;
}

// The call's Geo with its SO(2) tables (owned here).
template <typename T>
struct GeoData {
  std::vector<T> q_cs, k_cs;
  Geo<T> g;  // points into the tables: not copyable
  GeoData(const GeoData&) = delete;
  GeoData& operator=(const GeoData&) = delete;
  GeoData(const Dims& D, const GeoTensors& geo)
      : q_cs(so2_tables(D, geo.q_pos.data_ptr<T>(), geo.freqs.data_ptr<T>(), D.B * D.Nq)),
        k_cs(so2_tables(D, geo.k_pos.data_ptr<T>(), geo.freqs.data_ptr<T>(), D.B * D.Nk)),
        g{geo.q_se3.data_ptr<T>(), geo.k_se3.data_ptr<T>(), geo.q_so3.data_ptr<T>(), geo.k_so3.data_ptr<T>(),
          q_cs.data(), k_cs.data()} {}
};

// The operator on one token: y = mul * blockdiag(I, M4 (or M4^T), M8 (or M8^T), R(sign * phi)) x.
// Safe in place (each block is read before it is written).
template <typename T>
struct TokenOp {
  const T* m4;
  const T* m8;
  const T* cs;  // cos, sin of the token's angles phi (so2_tables)
  bool transpose;
  T sign;
};

template <typename T>
inline void apply_token(const Dims& D, const TokenOp<T>& op, T mul, const T* x, T* y) {
  for (int64_t c = 0; c < D.triv; ++c) y[c] = mul * x[c];
  int64_t o = D.triv;
  for (int64_t ch = 0; ch < D.se3; ch += 4) {
    T xs[4], ys[4];
    for (int c = 0; c < 4; ++c) xs[c] = x[o + ch + c];
    for (int r = 0; r < 4; ++r) {
      T acc = 0;
      for (int c = 0; c < 4; ++c) acc += (op.transpose ? op.m4[c * 4 + r] : op.m4[r * 4 + c]) * xs[c];
      ys[r] = acc;
    }
    for (int r = 0; r < 4; ++r) y[o + ch + r] = mul * ys[r];
  }
  o += D.se3;
  for (int64_t ch = 0; ch < D.so3; ch += 8) {
    T xs[8], ys[8];
    for (int c = 0; c < 8; ++c) xs[c] = x[o + ch + c];
    for (int r = 0; r < 8; ++r) {
      T acc = 0;
      for (int c = 0; c < 8; ++c) acc += (op.transpose ? op.m8[c * 8 + r] : op.m8[r * 8 + c]) * xs[c];
      ys[r] = acc;
    }
    for (int r = 0; r < 8; ++r) y[o + ch + r] = mul * ys[r];
  }
  o += D.so3;
  for (int64_t p = 0; p < D.so2 / 2; ++p) {
    const T c = op.cs[2 * p], s = op.sign * op.cs[2 * p + 1];
    const T x0 = x[o + 2 * p], x1 = x[o + 2 * p + 1];
    y[o + 2 * p] = mul * (c * x0 - s * x1);
    y[o + 2 * p + 1] = mul * (s * x0 + c * x1);
  }
}

// Token i of batch b on the query side (P: q_se3, q_so3, R(-phi)) or key side (P^-1: k_se3, k_so3, R(phi)).
template <typename T>
inline TokenOp<T> q_op(const Dims& D, const Geo<T>& g, int64_t b, int64_t i, bool transpose, T sign) {
  const int64_t view = b * D.Vq + i / D.tq();
  return {g.q_se3 + view * 16, g.q_so3 + view * 64, g.q_cs + (b * D.Nq + i) * D.so2, transpose, sign};
}
template <typename T>
inline TokenOp<T> k_op(const Dims& D, const Geo<T>& g, int64_t b, int64_t j, bool transpose, T sign) {
  const int64_t view = b * D.Vk + j / D.tk();
  return {g.k_se3 + view * 16, g.k_so3 + view * 64, g.k_cs + (b * D.Nk + j) * D.so2, transpose, sign};
}

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

// K~ = P^-1 K and V~ = P^-1 V (or V itself) for every (batch, head, key token).
template <typename T>
void transform_kv(const Dims& D, const Geo<T>& g, const T* k, const T* v, bool v_transform, T* kt, T* vt) {
  const int64_t d = D.d;
  at::parallel_for(0, D.B * D.H * D.Nk, 256, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (D.H * D.Nk), j = r % D.Nk;
      const auto op = k_op(D, g, b, j, false, T(1));
      apply_token(D, op, T(1), k + r * d, kt + r * d);
      if (v_transform) apply_token(D, op, T(1), v + r * d, vt + r * d);
      else for (int64_t c = 0; c < d; ++c) vt[r * d + c] = v[r * d + c];
    }
  });
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
// last row and not stored) and the 4-vector channel block at c0: each loaded vecs row feeds R rows.
template <typename T, int R>
inline void combine_block(const Coef<T>& coef, int64_t o0, int64_t no, int64_t n, const T* vecs, int64_t d,
                          int64_t c0, T mul, T* acc) {
  constexpr int64_t L = kLanes<T>;
  int64_t o[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) o[r] = std::min<int64_t>(o0 + r, no - 1);
  Vec<T> a[R][4];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) a[r][v] = loadu(acc + o[r] * d + c0 + v * L);
  for (int64_t i = 0; i < n; ++i) {
    const T* vi = vecs + i * d + c0;
    const Vec<T> v0 = loadu(vi), v1 = loadu(vi + L), v2 = loadu(vi + 2 * L), v3 = loadu(vi + 3 * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const T x = coef(o[r], i) * mul;
      a[r][0] += x * v0;
      a[r][1] += x * v1;
      a[r][2] += x * v2;
      a[r][3] += x * v3;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    if (o0 + r >= no) break;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) storeu(acc + o[r] * d + c0 + v * L, a[r][v]);
  }
}

// acc[o][c] += mul * sum_{i < n} coef(o, i) * vecs[i][c] for the no rows of acc ([no][d]): blocks of
// kCombineRows rows x 4 vectors of channels stay in registers while the n vecs rows stream past.
template <typename T>
inline void combine_rows(const Coef<T>& coef, int64_t no, int64_t n, const T* vecs, int64_t d, T mul, T* acc) {
  constexpr int64_t W = 4 * kLanes<T>;
  int64_t c0 = 0;
  for (; c0 + W <= d; c0 += W)
    for (int64_t o0 = 0; o0 < no; o0 += kCombineRows)
      combine_block<T, kCombineRows>(coef, o0, no, n, vecs, d, c0, mul, acc);
  if (c0 < d)  // the channels past the last 4-vector block
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

template <typename T>
void forward(const Dims& D, const Geo<T>& g, const T* q, const T* ktT, const T* vt, const bool* mask_all, T scale,
             bool v_transform, T* out, T* lse) {
  const int64_t d = D.d, nqt = (D.Nq + kBQ - 1) / kBQ, nkt = (D.Nk + kBK - 1) / kBK;
  const T ninf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, D.B * D.H * nqt, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qt(kBQ * d), acc(kBQ * d), s(kBQ * kBK), m(kBQ), l(kBQ);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / nqt, i0 = (item % nqt) * kBQ, b = bh / D.H;
      const int64_t nq = std::min(kBQ, D.Nq - i0);
      const T* qb = q + (bh * D.Nq + i0) * d;
      const T* ktTb = ktT + bh * nkt * d * kBK;
      const T* vtb = vt + bh * D.Nk * d;
      const bool* mask = mask_all ? mask_all + b * D.Nk : nullptr;
      for (int64_t r = 0; r < nq; ++r) {
        apply_token(D, q_op(D, g, b, i0 + r, true, T(1)), scale, qb + r * d, qt.data() + r * d);
        m[r] = ninf, l[r] = 0;
        for (int64_t c = 0; c < d; ++c) acc[r * d + c] = 0;
      }
      for (int64_t j0 = 0; j0 < D.Nk; j0 += kBK) {
        const int64_t nk = std::min(kBK, D.Nk - j0);
        tile_logits(D, qt.data(), ktTb + (j0 / kBK) * d * kBK, mask, nq, j0, nk, s.data());
        for (int64_t r = 0; r < nq; ++r) {
          T* sr = s.data() + r * kBK;
          T mx = m[r];
#pragma omp simd reduction(max : mx)
          for (int64_t j = 0; j < nk; ++j) mx = sr[j] > mx ? sr[j] : mx;
          if (mx == ninf) continue;  // every key so far masked
          const T alpha = vexp(m[r] - mx);  // 0 on the first live tile (m = -inf)
          T* ar = acc.data() + r * d;
          if (alpha != T(1))
            for (int64_t c = 0; c < d; ++c) ar[c] *= alpha;
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t j = 0; j < nk; ++j) {
            sr[j] = vexp(sr[j] - mx);
            sum += sr[j];
          }
          l[r] = l[r] * alpha + sum;
          m[r] = mx;
        }
        // rows whose keys are all masked so far kept their -inf logits: give them zero weights
        for (int64_t r = 0; r < nq; ++r)
          if (m[r] == ninf)
            for (int64_t j = 0; j < nk; ++j) s[r * kBK + j] = 0;
        combine_rows(Coef<T>{s.data(), kBK, 1}, nq, nk, vtb + j0 * d, d, T(1), acc.data());
      }
      for (int64_t r = 0; r < nq; ++r) {
        T* orow = out + (bh * D.Nq + i0 + r) * d;
        T* ar = acc.data() + r * d;
        if (l[r] == T(0)) {  // no key to attend to: output 0, lse -inf
          for (int64_t c = 0; c < d; ++c) orow[c] = 0;
          lse[bh * D.Nq + i0 + r] = ninf;
          continue;
        }
        const T inv = T(1) / l[r];
        if (v_transform) apply_token(D, q_op(D, g, b, i0 + r, false, T(-1)), inv, ar, orow);
        else for (int64_t c = 0; c < d; ++c) orow[c] = inv * ar[c];
        lse[bh * D.Nq + i0 + r] = m[r] + std::log(l[r]);
      }
    }
  });
}

// P and dS of a (query block x key tile): p = exp(s - lse) (0 for masked keys and for queries without
// keys, lse = -inf), ds = p * (do~ . v~ - D). s holds the logits on entry and P on exit; dp gets dS.
template <typename T>
inline void tile_probs(const Dims& D, const T* dot_rows, const T* vT, const T* Dv, const T* lse, const bool* mask,
                       int64_t nq, int64_t j0, int64_t nk, T* s, T* dp) {
  tile_dots(dot_rows, nq, vT, nk, D.d, dp);
  T live[kBK];
  for (int64_t j = 0; j < nk; ++j) live[j] = (mask && !mask[j0 + j]) ? T(0) : T(1);
  for (int64_t r = 0; r < nq; ++r) {
    T* sr = s + r * kBK;
    T* dr = dp + r * kBK;
    if (lse[r] == -std::numeric_limits<T>::infinity()) {
      for (int64_t j = 0; j < nk; ++j) sr[j] = 0, dr[j] = 0;
      continue;
    }
    const T L = lse[r], Dr = Dv[r];
#pragma omp simd
    for (int64_t j = 0; j < nk; ++j) {
      const T p = live[j] * vexp(sr[j] - L);
      sr[j] = p;
      dr[j] = p * (dr[j] - Dr);
    }
  }
}

// dK~ and dV~ by key tiles; queries are streamed in blocks of kBQ. With dqt (one pass), dQ~ and, when
// ot is given, o~ as well: an item is then a whole (batch, head), which owns its queries' rows, so it
// accumulates them while it walks the key tiles and each tile's logits and dS are computed once, not
// twice (use it when there is at least one (batch, head) per thread). The sums run in the same order
// as backward_q's (key tiles, then query blocks, ascending): both ways give the same bits.
template <typename T>
void backward_kv(const Dims& D, const T* qt, const T* dot_t, const T* Dv, const T* lse, const T* kt, const T* vt,
                 const bool* mask_all, T scale, T* dkt, T* dvt, T* dqt, T* ot) {
  const int64_t d = D.d, nkt = (D.Nk + kBK - 1) / kBK, per_bh = dqt ? 1 : nkt;
  at::parallel_for(0, D.B * D.H * per_bh, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> kT(d * kBK), vT(d * kBK), s(kBQ * kBK), dp(kBQ * kBK);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / per_bh, b = bh / D.H;
      const int64_t tile_lo = dqt ? 0 : item % per_bh, tile_hi = dqt ? nkt : tile_lo + 1;
      const bool* mask = mask_all ? mask_all + b * D.Nk : nullptr;
      if (dqt) std::fill(dqt + bh * D.Nq * d, dqt + (bh + 1) * D.Nq * d, T(0));
      if (ot) std::fill(ot + bh * D.Nq * d, ot + (bh + 1) * D.Nq * d, T(0));
      for (int64_t tile = tile_lo; tile < tile_hi; ++tile) {
        const int64_t j0 = tile * kBK, nk = std::min(kBK, D.Nk - j0);
        const T* ktile = kt + (bh * D.Nk + j0) * d;
        const T* vtile = vt + (bh * D.Nk + j0) * d;
        T* dk = dkt + (bh * D.Nk + j0) * d;
        T* dv = dvt + (bh * D.Nk + j0) * d;
        std::fill(dk, dk + nk * d, T(0));
        std::fill(dv, dv + nk * d, T(0));
        transpose_tile(ktile, nk, d, kT.data());
        transpose_tile(vtile, nk, d, vT.data());
        for (int64_t i0 = 0; i0 < D.Nq; i0 += kBQ) {
          const int64_t nq = std::min(kBQ, D.Nq - i0), row0 = bh * D.Nq + i0;
          tile_dots(qt + row0 * d, nq, kT.data(), nk, d, s.data());
          tile_probs(D, dot_t + row0 * d, vT.data(), Dv + row0, lse + row0, mask, nq, j0, nk, s.data(), dp.data());
          // dv[j] += sum_r P[r, j] do~[r], dk[j] += sum_r dS[r, j] q~[r]: columns of P and dS
          combine_rows(Coef<T>{s.data(), 1, kBK}, nk, nq, dot_t + row0 * d, d, T(1), dv);
          combine_rows(Coef<T>{dp.data(), 1, kBK}, nk, nq, qt + row0 * d, d, T(1), dk);
          if (dqt) combine_rows(Coef<T>{dp.data(), kBK, 1}, nq, nk, ktile, d, scale, dqt + row0 * d);
          if (ot) combine_rows(Coef<T>{s.data(), kBK, 1}, nq, nk, vtile, d, T(1), ot + row0 * d);
        }
      }
    }
  });
}

// dQ~ (scaled back to dL/d(P^T q)) and, when needed, o~ by query tiles.
template <typename T>
void backward_q(const Dims& D, const T* qt, const T* dot_t, const T* Dv, const T* lse, const T* kt, const T* vt,
                const bool* mask_all, T scale, T* dqt, T* ot) {
  const int64_t d = D.d, nqt = (D.Nq + kBQ - 1) / kBQ;
  at::parallel_for(0, D.B * D.H * nqt, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> kT(d * kBK), vT(d * kBK), s(kBQ * kBK), dp(kBQ * kBK);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / nqt, i0 = (item % nqt) * kBQ, b = bh / D.H;
      const int64_t nq = std::min(kBQ, D.Nq - i0), row0 = bh * D.Nq + i0;
      const bool* mask = mask_all ? mask_all + b * D.Nk : nullptr;
      T* dq = dqt + row0 * d;
      T* o = ot ? ot + row0 * d : nullptr;
      for (int64_t c = 0; c < nq * d; ++c) dq[c] = 0;
      if (o)
        for (int64_t c = 0; c < nq * d; ++c) o[c] = 0;
      for (int64_t j0 = 0; j0 < D.Nk; j0 += kBK) {
        const int64_t nk = std::min(kBK, D.Nk - j0);
        const T* ktile = kt + (bh * D.Nk + j0) * d;
        const T* vtile = vt + (bh * D.Nk + j0) * d;
        transpose_tile(ktile, nk, d, kT.data());
        transpose_tile(vtile, nk, d, vT.data());
        tile_dots(qt + row0 * d, nq, kT.data(), nk, d, s.data());
        tile_probs(D, dot_t + row0 * d, vT.data(), Dv + row0, lse + row0, mask, nq, j0, nk, s.data(), dp.data());
        combine_rows(Coef<T>{dp.data(), kBK, 1}, nq, nk, ktile, d, scale, dq);
        if (o) combine_rows(Coef<T>{s.data(), kBK, 1}, nq, nk, vtile, d, T(1), o);
      }
    }
  });
}

using Double4 = double __attribute__((vector_size(32)));

template <typename T>
inline Double4 load4(const T* p) {
  return Double4{double(p[0]), double(p[1]), double(p[2]), double(p[3])};
}

// sum over heads, tokens of the view and 4-chunks of a[r] * b[c] (the 4x4 outer products of one site),
// in double; acc[r] is row r. With b_map, b's chunks are first mapped by it (4 columns, b_map[c] is
// column c): the o~ = P^-1 O of the output's SE(3) channels, recovered from O instead of recomputed.
template <typename T>
inline void add_outer4(const Dims& D, const T* a, const T* b, int64_t bb, int64_t N, int64_t t0, int64_t t1,
                       Double4* acc, const Double4* b_map = nullptr) {
  for (int64_t h = 0; h < D.H; ++h)
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t off = ((bb * D.H + h) * N + t) * D.d + D.triv;
      for (int64_t ch = 0; ch < D.se3; ch += 4) {
        const T* ar = a + off + ch;
        const T* br = b + off + ch;
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

std::tuple<at::Tensor, at::Tensor> gta_fwd_cpu(const Dims& D, const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const GeoTensors& geo,
                                               const std::optional<at::Tensor>& key_mask, double scale,
                                               bool v_transform) {
  auto out = at::empty(q.sizes(), q.options());
  auto lse = at::empty({D.B, D.H, D.Nq}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gta_attention_fwd", [&] {
    using T = scalar_t;
    GeoData<T> gd(D, geo);
    const Geo<T>& g = gd.g;
    const bool* mask = key_mask ? key_mask->data_ptr<bool>() : nullptr;
    const size_t kv_bytes = size_t(k.numel()) * sizeof(T);
    CpuScratch scratch({kv_bytes, kv_bytes, size_t(D.B * D.H * ((D.Nk + kBK - 1) / kBK) * D.d * kBK) * sizeof(T)});
    T *kt = scratch.get<T>(0), *vt = scratch.get<T>(1), *ktT = scratch.get<T>(2);
    transform_kv(D, g, k.data_ptr<T>(), v.data_ptr<T>(), v_transform, kt, vt);
    transpose_key_tiles(D, kt, ktT);
    forward(D, g, q.data_ptr<T>(), ktT, vt, mask, T(scale), v_transform, out.data_ptr<T>(), lse.data_ptr<T>());
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gta_bwd_cpu(
    const Dims& D, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const GeoTensors& geo, const std::optional<at::Tensor>& key_mask,
    double scale, bool v_transform) {
  auto dq = at::empty(q.sizes(), q.options()), dk = at::empty(k.sizes(), k.options());
  auto dv = at::empty(v.sizes(), v.options());
  auto dq_se3 = at::zeros(geo.q_se3.sizes(), geo.q_se3.options());
  auto dk_se3 = at::zeros(geo.k_se3.sizes(), geo.k_se3.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "gta_attention_bwd", [&] {
    using T = scalar_t;
    const size_t q_bytes = size_t(q.numel()) * sizeof(T), kv_bytes = size_t(k.numel()) * sizeof(T);
    CpuScratch scratch({q_bytes, q_bytes, size_t(D.B * D.H * D.Nq) * sizeof(T), kv_bytes, kv_bytes});
    T *qtp = scratch.get<T>(0), *dotp = scratch.get<T>(1), *Dvp = scratch.get<T>(2);
    T *ktp = scratch.get<T>(3), *vtp = scratch.get<T>(4);
    // The SE(3) gradient needs o~ (the output before P). It is P^-1 O where P is invertible, which saves a
    // sixth tile product; otherwise it is recomputed as P V~ with the other sums.
    const std::vector<Double4> q_inv =
        v_transform && D.se3 > 0 ? query_se3_inverses(D, geo.q_se3.data_ptr<T>()) : std::vector<Double4>();
    const bool need_ot = v_transform && D.se3 > 0 && q_inv.empty();
    auto ot = need_ot ? at::empty(q.sizes(), q.options()) : at::Tensor();
    GeoData<T> gd(D, geo);
    const Geo<T>& g = gd.g;
    const bool* mask = key_mask ? key_mask->data_ptr<bool>() : nullptr;
    const int64_t d = D.d;
    const T* qp = q.data_ptr<T>();
    const T* gop = grad_out.data_ptr<T>();
    const T* op = out.data_ptr<T>();
    // query-side prologue: q~ (scaled), do~ = P^T dO, and D_i = dO_i . O_i (= do~_i . o~_i)
    at::parallel_for(0, D.B * D.H * D.Nq, 256, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / (D.H * D.Nq), i = row % D.Nq;
        apply_token(D, q_op(D, g, b, i, true, T(1)), T(scale), qp + row * d, qtp + row * d);
        if (v_transform) apply_token(D, q_op(D, g, b, i, true, T(1)), T(1), gop + row * d, dotp + row * d);
        else for (int64_t c = 0; c < d; ++c) dotp[row * d + c] = gop[row * d + c];
        Dvp[row] = dot(gop + row * d, op + row * d, d);
      }
    });
    transform_kv(D, g, k.data_ptr<T>(), v.data_ptr<T>(), v_transform, ktp, vtp);
    T* otp = need_ot ? ot.data_ptr<T>() : nullptr;
    if (D.B * D.H >= at::get_num_threads()) {  // one pass
      backward_kv(D, qtp, dotp, Dvp, lse.data_ptr<T>(), ktp, vtp, mask, T(scale),
                  dk.data_ptr<T>(), dv.data_ptr<T>(), dq.data_ptr<T>(), otp);
    } else {  // few (batch, head) pairs: parallel over key tiles, then over query tiles
      backward_kv(D, qtp, dotp, Dvp, lse.data_ptr<T>(), ktp, vtp, mask, T(scale),
                  dk.data_ptr<T>(), dv.data_ptr<T>(), static_cast<T*>(nullptr), static_cast<T*>(nullptr));
      backward_q(D, qtp, dotp, Dvp, lse.data_ptr<T>(), ktp, vtp, mask, T(scale),
                 dq.data_ptr<T>(), otp);
    }
    // per (batch, view): 4x4 gradients in a fixed order, then the transposed transforms in place
    T *dqp = dq.data_ptr<T>(), *dkp = dk.data_ptr<T>(), *dvp = dv.data_ptr<T>();
    const T *kp = k.data_ptr<T>(), *vp = v.data_ptr<T>();
    at::parallel_for(0, D.B * D.Vq, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bv = begin; bv < end; ++bv) {
        const int64_t b = bv / D.Vq, t0 = (bv % D.Vq) * D.tq(), t1 = t0 + D.tq();
        Double4 acc[4] = {};
        add_outer4(D, qp, dqp, b, D.Nq, t0, t1, acc);  // q~ = P^T q: dP += q dq~^T
        if (need_ot) add_outer4(D, gop, ot.data_ptr<T>(), b, D.Nq, t0, t1, acc);  // O = P o~: dP += dO o~^T
        else if (!q_inv.empty()) add_outer4(D, gop, op, b, D.Nq, t0, t1, acc, q_inv.data() + bv * 4);
        store_outer4(acc, dq_se3.data_ptr<T>() + bv * 16);
        for (int64_t h = 0; h < D.H; ++h)
          for (int64_t t = t0; t < t1; ++t) {
            T* x = dqp + ((b * D.H + h) * D.Nq + t) * d;
            apply_token(D, q_op(D, g, b, t, false, T(-1)), T(1), x, x);
          }
      }
    });
    at::parallel_for(0, D.B * D.Vk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bv = begin; bv < end; ++bv) {
        const int64_t b = bv / D.Vk, t0 = (bv % D.Vk) * D.tk(), t1 = t0 + D.tk();
        Double4 acc[4] = {};
        add_outer4(D, dkp, kp, b, D.Nk, t0, t1, acc);  // k~ = P^-1 k: dP^-1 += dk~ k^T
        if (v_transform) add_outer4(D, dvp, vp, b, D.Nk, t0, t1, acc);
        store_outer4(acc, dk_se3.data_ptr<T>() + bv * 16);
        for (int64_t h = 0; h < D.H; ++h)
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t off = ((b * D.H + h) * D.Nk + t) * d;
            const auto kop = k_op(D, g, b, t, true, T(-1));
            apply_token(D, kop, T(1), dkp + off, dkp + off);
            if (v_transform) apply_token(D, kop, T(1), dvp + off, dvp + off);
          }
      }
    });
  });
  return {dq, dk, dv, dq_se3, dk_se3};
}

}  // namespace phasor::gta::PHASOR_CPU_ISA
