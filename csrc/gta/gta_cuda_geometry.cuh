// Per-token GTA geometry shared by the CUDA kernels (gta_cuda.cu: SIMT; gta_cuda_mma.cu: tensor cores):
// the problem shape, the geometry pointers, and the block-diagonal transform of one token
//   y = blockdiag(I_triv, M4 | M4^T per 4 channels, M8 | M8^T per 8 channels, R(sign * phi) per pair) x.
// Everything is __host__ __device__ so that a host program can check apply_chunk4 against apply_channel.
#pragma once

#include <cmath>
#include <cstdint>

namespace phasor::gta::dev {

struct Shape {
  int B, H, Nq, Nk, d, triv, se3, so3, so2, Vq, Vk, tq, tk;
};

struct GeoPtrs {
  const float *q_se3, *k_se3, *q_so3, *k_so3, *q_pos, *k_pos, *freqs;
};

struct TokenOp {
  const float* m4;
  const float* m8;
  const float* pos;
  bool transpose;
  float sign;
};

// Query token i of batch b: P (transpose = false) or P^T; key token j: P^-1 as stored (k_se3, k_so3).
__host__ __device__ __forceinline__ TokenOp q_op(const Shape& S, const GeoPtrs& g, int b, int i, bool tr, float sign) {
  const int64_t view = int64_t(b) * S.Vq + i / S.tq;
  return {g.q_se3 + view * 16, g.q_so3 + view * 64, g.q_pos + (int64_t(b) * S.Nq + i) * 2, tr, sign};
}
__host__ __device__ __forceinline__ TokenOp k_op(const Shape& S, const GeoPtrs& g, int b, int j, bool tr, float sign) {
  const int64_t view = int64_t(b) * S.Vk + j / S.tk;
  return {g.k_se3 + view * 16, g.k_so3 + view * 64, g.k_pos + (int64_t(b) * S.Nk + j) * 2, tr, sign};
}

// Channel c of y, x(cc) reading input channel cc (one output channel per call: the SIMT kernels).
template <typename X>
__host__ __device__ __forceinline__ float apply_channel(const Shape& S, const float* freqs, const TokenOp& op, X x,
                                                        int c) {
  if (c < S.triv) return x(c);
  int o = S.triv;
  if (c < o + S.se3) {
    const int base = o + ((c - o) & ~3), r = (c - o) & 3;
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < 4; ++k) acc += (op.transpose ? op.m4[k * 4 + r] : op.m4[r * 4 + k]) * x(base + k);
    return acc;
  }
  o += S.se3;
  if (c < o + S.so3) {
    const int base = o + ((c - o) & ~7), r = (c - o) & 7;
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < 8; ++k) acc += (op.transpose ? op.m8[k * 8 + r] : op.m8[r * 8 + k]) * x(base + k);
    return acc;
  }
  o += S.so3;
  const int p = (c - o) >> 1;
  float sn, cs;
  sincosf(op.sign * op.pos[p & 1] * freqs[p >> 1], &sn, &cs);
  const float x0 = x(o + 2 * p), x1 = x(o + 2 * p + 1);
  return ((c - o) & 1) ? sn * x0 + cs * x1 : cs * x0 - sn * x1;
}

struct F4 {
  float v[4];
};

// Channels c0 .. c0+3 of y for one or two inputs sharing the token (K and V), c0 % 4 == 0. Needs every
// segment boundary (triv, triv+se3, triv+se3+so3) to be a multiple of 4, which holds when d % 4 == 0
// (se3 % 4 == so3 % 8 == so2 % 4 == 0), so the chunk lies in one segment: the same math as
// apply_channel on channels c0 .. c0+3, with one sincosf per SO(2) pair instead of one per channel.
// ld0(c) / ld1(c) return F4 of input channels c .. c+3 (c % 4 == 0); y1 is written only when `two`.
// Explicit fmaf pins the rounding, so every caller (prepass, on-load, host check) gives the same bits.
template <typename L0, typename L1>
__host__ __device__ __forceinline__ void apply_chunk4(const Shape& S, const float* freqs, const TokenOp& op, int c0,
                                                      L0 ld0, F4& y0, L1 ld1, F4& y1, bool two) {
  int o = S.triv;
  if (c0 < o) {
    y0 = ld0(c0);
    if (two) y1 = ld1(c0);
    return;
  }
  if (c0 < o + S.se3) {
    float m[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
      for (int k = 0; k < 4; ++k) m[r][k] = op.transpose ? op.m4[k * 4 + r] : op.m4[r * 4 + k];
    const F4 a = ld0(c0);
    F4 b{};
    if (two) b = ld1(c0);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float s0 = 0.f, s1 = 0.f;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        s0 = fmaf(m[r][k], a.v[k], s0);
        s1 = fmaf(m[r][k], b.v[k], s1);
      }
      y0.v[r] = s0;
      if (two) y1.v[r] = s1;
    }
    return;
  }
  o += S.se3;
  if (c0 < o + S.so3) {
    const int base = o + ((c0 - o) & ~7), r0 = c0 - base;  // r0 = 0 or 4: the half of the 8x8 block
    const F4 a0 = ld0(base), a1 = ld0(base + 4);
    F4 b0{}, b1{};
    if (two) b0 = ld1(base), b1 = ld1(base + 4);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      float s0 = 0.f, s1 = 0.f;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float m = op.transpose ? op.m8[k * 8 + r0 + r] : op.m8[(r0 + r) * 8 + k];
        const float xa = k < 4 ? a0.v[k] : a1.v[k - 4];
        const float xb = k < 4 ? b0.v[k] : b1.v[k - 4];
        s0 = fmaf(m, xa, s0);
        s1 = fmaf(m, xb, s1);
      }
      y0.v[r] = s0;
      if (two) y1.v[r] = s1;
    }
    return;
  }
  o += S.so3;
  // pairs p0 (axis 0) and p0 + 1 (axis 1) of frequency f = p0 / 2
  const int p0 = (c0 - o) >> 1;
  const float f = freqs[p0 >> 1];
  float sn0, cs0, sn1, cs1;
  sincosf(op.sign * op.pos[0] * f, &sn0, &cs0);
  sincosf(op.sign * op.pos[1] * f, &sn1, &cs1);
  const F4 a = ld0(c0);
  y0.v[0] = fmaf(cs0, a.v[0], -sn0 * a.v[1]);
  y0.v[1] = fmaf(sn0, a.v[0], cs0 * a.v[1]);
  y0.v[2] = fmaf(cs1, a.v[2], -sn1 * a.v[3]);
  y0.v[3] = fmaf(sn1, a.v[2], cs1 * a.v[3]);
  if (two) {
    const F4 b = ld1(c0);
    y1.v[0] = fmaf(cs0, b.v[0], -sn0 * b.v[1]);
    y1.v[1] = fmaf(sn0, b.v[0], cs0 * b.v[1]);
    y1.v[2] = fmaf(cs1, b.v[2], -sn1 * b.v[3]);
    y1.v[3] = fmaf(sn1, b.v[2], cs1 * b.v[3]);
  }
}

}  // namespace phasor::gta::dev
