// GTA CPU kernels: the per-token transforms (SE(3) / SO(3) blocks, SO(2) tables) and K~, V~.
// Only gta_cpu_kernels.h includes this, once per instruction set (it defines PHASOR_CPU_ISA).
#pragma once

namespace phasor::gta::PHASOR_CPU_ISA {
namespace {

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

// y[o..o+n) = mul * M x[o..o+n) (or M^T) for each n-channel chunk of [o, o + width): in place is safe
template <int n, typename T>
inline void apply_blocks(const T* m, bool transpose, T mul, int64_t o, int64_t width, const T* x, T* y) {
  for (int64_t ch = o; ch < o + width; ch += n) {
    T xs[n], ys[n];
    for (int c = 0; c < n; ++c) xs[c] = x[ch + c];
    for (int r = 0; r < n; ++r) {
      T acc = 0;
      for (int c = 0; c < n; ++c) acc += (transpose ? m[c * n + r] : m[r * n + c]) * xs[c];
      ys[r] = acc;
    }
    for (int r = 0; r < n; ++r) y[ch + r] = mul * ys[r];
  }
}

template <typename T>
inline void apply_token(const Dims& D, const TokenOp<T>& op, T mul, const T* x, T* y) {
  for (int64_t c = 0; c < D.triv; ++c) y[c] = mul * x[c];
  int64_t o = D.triv;
  apply_blocks<4>(op.m4, op.transpose, mul, o, D.se3, x, y);
  o += D.se3;
  apply_blocks<8>(op.m8, op.transpose, mul, o, D.so3, x, y);
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

// Storage dtype S (bf16/fp16) to and from the compute dtype T around apply_token, through a row buffer
// (n <= kMaxHeadDim): the transforms then run the very code of the float32 path, so a bf16 result is
// the float32 op's result on the same values, rounded once. When S is T there is no copy.
template <typename T, typename S>
inline const T* as_compute(const S* x, T* buf, int64_t n) {
  if constexpr (std::is_same_v<S, T>) {
    return x;
  } else {
    for (int64_t c = 0; c < n; ++c) buf[c] = T(x[c]);
    return buf;
  }
}

// y = mul * op(x) stored as S (safe in place when S is T).
template <typename T, typename S>
inline void apply_token_as(const Dims& D, const TokenOp<T>& op, T mul, const T* x, S* y, T* buf) {
  if constexpr (std::is_same_v<S, T>) {
    apply_token(D, op, mul, x, y);
  } else {
    apply_token(D, op, mul, x, buf);
    for (int64_t c = 0; c < D.d; ++c) y[c] = S(buf[c]);
  }
}

// K~ = P^-1 K and V~ = P^-1 V (or V itself) for every (batch, head, key token), from storage dtype S.
template <typename T, typename S>
void transform_kv(const Dims& D, const Geo<T>& g, const S* k, const S* v, bool v_transform, T* kt, T* vt) {
  const int64_t d = D.d;
  at::parallel_for(0, D.B * D.H * D.Nk, 256, [&](int64_t begin, int64_t end) {
    T buf[kMaxHeadDim];
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (D.H * D.Nk), j = r % D.Nk;
      const auto op = k_op(D, g, b, j, false, T(1));
      apply_token(D, op, T(1), as_compute(k + r * d, buf, d), kt + r * d);
      if (v_transform) apply_token(D, op, T(1), as_compute(v + r * d, buf, d), vt + r * d);
      else for (int64_t c = 0; c < d; ++c) vt[r * d + c] = T(v[r * d + c]);
    }
  });
}

}  // namespace
}  // namespace phasor::gta::PHASOR_CPU_ISA
