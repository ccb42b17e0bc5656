// CPU kernels of the wave-RNN recurrence, forward and backward (BPTT). Compiled once per
// instruction set (wave_rnn_cpu_{base,avx2,avx512}.cpp define PHASOR_CPU_ISA); wave_rnn_cpu.cpp picks one
// at run time. Math and layouts: wave_rnn.h.
//
// Samples are independent, so threads split the batch (at::parallel_for) and each runs the whole
// time loop for its samples with the state in small per-thread buffers that stay in L1/L2.
// The ring rows are kept circularly padded ([c][n + 2p]), so the convolution is, per output row,
// c * f shifted AXPYs over contiguous memory: `conv_rows` keeps a block of output positions in
// vector registers (GCC vector extensions: 64 bytes in the avx512 build, 32 bytes otherwise, which
// the base build runs as two SSE halves) while it streams over input channels and taps.
// The backward runs the same convolution with transposed, flipped taps on the padded delta.
// Weight gradients accumulate as float vectors over chunks of kGradChunk steps, then move into
// per-lane double accumulators; per-sample partials are summed in batch order at the end, so
// results do not depend on the thread count.
#include "common/cpu_memory.h"
#include "wave_rnn/wave_rnn_cpu_entry.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <cstring>
#include <vector>

#ifndef PHASOR_CPU_ISA
#error "define PHASOR_CPU_ISA (the namespace of this instruction-set variant) before including"
#endif

// The base build passes 32-byte vectors between inline helpers in two SSE halves; GCC warns that
// this differs from the AVX calling convention, which no caller outside this file ever sees.
#pragma GCC diagnostic ignored "-Wpsabi"

#include "common/cpu_vec.h"

namespace phasor::wave::PHASOR_CPU_ISA {
namespace {

using cpu_vec::keep_in_register;
using cpu_vec::kLanes;
using cpu_vec::loadu;
using cpu_vec::splat;
using cpu_vec::storeu;
using cpu_vec::Vec;

// Elements after the last row of every padded buffer, so a vector read of a ring's tail stays inside.
constexpr int64_t kSlack = kLanes<float>;

// Register blocking of the convolution: NO output rows x NV vectors of ring positions stay in
// registers (NO * NV accumulator chains cover the FMA latency; each input vector loaded feeds NO
// rows, each broadcast tap NV vectors). AVX-512 has 32 vector registers, the others 16.
#ifdef __AVX512F__
constexpr int kConvRows = 4, kConvVecs = 4, kGradRows = 8;  // weight gradient: 8 x 3 chains
#elif defined(__AVX2__)
constexpr int kConvRows = 4, kConvVecs = 2, kGradRows = 2;
#else
constexpr int kConvRows = 2, kConvVecs = 2, kGradRows = 2;  // 32-byte vectors are two SSE registers here
#endif

// The taps in the order the convolution reads them: rows in blocks of kConvRows, [block][i][k][r],
// then the leftover rows one by one ([o][i][k]), so one (i, k) step reads adjacent taps.
// `flip` packs the backward's transposed, flipped taps: Wt[i, o, k] = W[o, i, f - 1 - k].
template <typename T>
std::vector<T> pack_taps(const Dims& d, const T* w, bool flip) {
  const int64_t c = d.c, f = d.f;
  auto tap = [&](int64_t o, int64_t i, int64_t k) {
    return flip ? w[(i * c + o) * f + (f - 1 - k)] : w[(o * c + i) * f + k];
  };
  std::vector<T> out(c * c * f);
  int64_t q = 0, o0 = 0;
  for (; o0 + kConvRows <= c; o0 += kConvRows)
    for (int64_t i = 0; i < c; ++i)
      for (int64_t k = 0; k < f; ++k)
        for (int r = 0; r < kConvRows; ++r) out[q++] = tap(o0 + r, i, k);
  for (; o0 < c; ++o0)
    for (int64_t i = 0; i < c; ++i)
      for (int64_t k = 0; k < f; ++k) out[q++] = tap(o0, i, k);
  return out;
}

// out[o0 + r, j0 .. j0 + NV*L) = bias[o] + base[o, j] + sum_{i, k} w[o, i, k] * in_pad[i, j + k], for
// NO rows; wp: the block's packed taps [i][k][r]. F = the kernel size when known at compile time
// (its tap loop then unrolls), 0 = read it from d.
template <typename T, int NO, int NV, int F>
inline void conv_block(const Dims& d, const T* in_pad, const T* wp, const T* bias, const T* base, int64_t o0,
                       int64_t j0, T* out) {
  constexpr int64_t L = kLanes<T>;
  const int64_t c = d.c, f = F ? F : d.f, n = d.n, npad = d.npad();
  Vec<T> acc[NO][NV];
#pragma GCC unroll 8
  for (int r = 0; r < NO; ++r) {
    const Vec<T> b = splat(bias ? bias[o0 + r] : T(0));
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[r][v] = b + (base ? loadu(base + (o0 + r) * n + j0 + v * L) : Vec<T>{});
  }
  for (int64_t i = 0; i < c; ++i) {
    const T* row = in_pad + i * npad + j0;
    const T* wi = wp + i * f * NO;
#pragma GCC unroll 16
    for (int64_t k = 0; k < f; ++k) {
      Vec<T> x[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) x[v] = loadu(row + k + v * L);
#pragma GCC unroll 8
      for (int r = 0; r < NO; ++r) {
        const Vec<T> wk = splat(wi[k * NO + r]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] += wk * x[v];
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NO; ++r)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) storeu(out + (o0 + r) * n + j0 + v * L, acc[r][v]);
}

// The last rem < L positions of NO rows, as one vector: base and out go through a small buffer, and
// the input reads run up to L - 1 elements past the row (into the next row, or into the kSlack
// elements every padded buffer carries after its last row); those lanes are discarded.
template <typename T, int NO, int F>
inline void conv_block_tail(const Dims& d, const T* in_pad, const T* wp, const T* bias, const T* base, int64_t o0,
                            int64_t j0, int64_t rem, T* out) {
  constexpr int64_t L = kLanes<T>;
  const int64_t c = d.c, f = F ? F : d.f, n = d.n, npad = d.npad();
  Vec<T> acc[NO];
  T buf[L] = {};
#pragma GCC unroll 8
  for (int r = 0; r < NO; ++r) {
    if (base) std::memcpy(buf, base + (o0 + r) * n + j0, rem * sizeof(T));
    acc[r] = splat(bias ? bias[o0 + r] : T(0)) + loadu(buf);
  }
  for (int64_t i = 0; i < c; ++i) {
    const T* row = in_pad + i * npad + j0;
    const T* wi = wp + i * f * NO;
#pragma GCC unroll 16
    for (int64_t k = 0; k < f; ++k) {
      const Vec<T> x = loadu(row + k);
#pragma GCC unroll 8
      for (int r = 0; r < NO; ++r) acc[r] += splat(wi[k * NO + r]) * x;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < NO; ++r) {
    storeu(buf, acc[r]);
    std::memcpy(out + (o0 + r) * n + j0, buf, rem * sizeof(T));
  }
}

// All ring positions of NO output rows starting at o0: register blocks, then a one-vector tail.
template <typename T, int NO, int F>
inline void conv_row_group(const Dims& d, const T* in_pad, const T* wp, const T* bias, const T* base, int64_t o0,
                           T* out) {
  constexpr int64_t L = kLanes<T>;
  const int64_t n = d.n;
  int64_t j = 0;
  for (; j + kConvVecs * L <= n; j += kConvVecs * L) conv_block<T, NO, kConvVecs, F>(d, in_pad, wp, bias, base, o0, j, out);
  for (; j + L <= n; j += L) conv_block<T, NO, 1, F>(d, in_pad, wp, bias, base, o0, j, out);
  if (j < n) conv_block_tail<T, NO, F>(d, in_pad, wp, bias, base, o0, j, n - j, out);
}

// The whole circular convolution of one sample: out [c][n] from in_pad [c][n + 2p] and the taps
// packed by pack_taps.
template <typename T, int F>
void conv_rows(const Dims& d, const T* in_pad, const T* packed, const T* bias, const T* base, T* out) {
  const int64_t block_taps = d.c * d.f;  // taps per output row
  int64_t o = 0;
  for (; o + kConvRows <= d.c; o += kConvRows)
    conv_row_group<T, kConvRows, F>(d, in_pad, packed + o * block_taps, bias, base, o, out);
  for (; o < d.c; ++o) conv_row_group<T, 1, F>(d, in_pad, packed + o * block_taps, bias, base, o, out);
}

// The backward's weight gradient runs once per chunk of kGradChunk steps rather than per step: the
// deltas and padded previous states of the chunk's steps sit in slots of one buffer, so the block
// below loads and stores its accumulators once per chunk (with n = 64 a single step is only 4
// vectors per row, too short to amortise them).
constexpr int64_t kGradChunk = 16;

// Slot layout of the chunk buffers: slot s of `delta` / `hprev` starts at s * slot elements;
// `dtail` holds each slot's rows' last n mod L positions zero-padded to one vector ([S][c][L]).
template <typename T>
struct GradChunk {
  const T* delta;  // [S][c][n + 2p] (+ slack), the padded delta_t
  const T* hprev;  // [S][c][n + 2p] (+ slack), the padded h_{t-1}
  const T* dtail;  // [S][c][L], or null when L divides n
  int64_t slot;    // elements per slot of delta and hprev
  int64_t steps;   // filled slots
};

// dW[o0 + r, i, k0 + q] += sum_{s, j} delta_s[o0 + r, j] * hprev_s[i, j + k0 + q] for NR rows and KB
// taps, as per-lane vector partials dWv [o][i][k]; the NR * KB chains share each delta and h load.
template <typename T, int NR, int KB>
inline void weight_grad_block(const Dims& d, const GradChunk<T>& ch, int64_t o0, int64_t i, int64_t k0,
                              int64_t nvec, Vec<T>* dWv) {
  constexpr int64_t L = kLanes<T>;
  const int64_t c = d.c, f = d.f, npad = d.npad();
  Vec<T> acc[NR][KB];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < KB; ++q) acc[r][q] = dWv[((o0 + r) * c + i) * f + k0 + q];
  // One vector of positions: KB shifted h loads, then one delta load per row feeding KB chains (in a
  // register: with NR * KB accumulators live there is room for one delta at a time, not NR).
  auto step = [&](const T* drows, int64_t row_stride, const T* h) {
    Vec<T> hv[KB];
#pragma GCC unroll 8
    for (int q = 0; q < KB; ++q) hv[q] = loadu(h + k0 + q);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      Vec<T> dv = loadu(drows + r * row_stride);
      keep_in_register<T>(dv);
#pragma GCC unroll 8
      for (int q = 0; q < KB; ++q) acc[r][q] += dv * hv[q];
    }
  };
  for (int64_t s = 0; s < ch.steps; ++s) {
    const T* dbase = ch.delta + s * ch.slot + o0 * npad + d.p;
    const T* hrow = ch.hprev + s * ch.slot + i * npad;
    for (int64_t v = 0; v < nvec; ++v) step(dbase + v * L, npad, hrow + v * L);
    // zero lanes past the ring end cancel whatever the h reads there return
    if (ch.dtail) step(ch.dtail + (s * c + o0) * L, L, hrow + nvec * L);
  }
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 8
    for (int q = 0; q < KB; ++q) dWv[((o0 + r) * c + i) * f + k0 + q] = acc[r][q];
}

// One chunk's weight-gradient partials for all (o, i, k): F taps at once when F is known at compile
// time (3: the default), one tap at a time otherwise.
template <typename T, int F>
void weight_grad_chunk(const Dims& d, const GradChunk<T>& ch, int64_t nvec, Vec<T>* dWv) {
  const int64_t c = d.c;
  auto rows = [&](auto nr, int64_t o0) {
    constexpr int NR = decltype(nr)::value;
    for (int64_t i = 0; i < c; ++i) {
      if constexpr (F > 0) {
        weight_grad_block<T, NR, F>(d, ch, o0, i, 0, nvec, dWv);
      } else {
        for (int64_t k = 0; k < d.f; ++k) weight_grad_block<T, NR, 1>(d, ch, o0, i, k, nvec, dWv);
      }
    }
  };
  int64_t o = 0;
  for (; o + kGradRows <= c; o += kGradRows) rows(std::integral_constant<int, kGradRows>{}, o);
  for (; o < c; ++o) rows(std::integral_constant<int, 1>{}, o);
}

// Circular padding of row r (its n values already at [p, p + n)): position q holds (q - p) mod n.
template <typename T>
inline void wrap_row(T* row, int64_t n, int64_t p) {
  for (int64_t q = 0; q < p; ++q) {
    row[q] = row[p + (((q - p) % n) + n) % n];
    row[p + n + q] = row[p + (q % n)];
  }
}

template <typename T>
void load_padded(const Dims& d, const T* src, T* dst_pad) {
  for (int64_t i = 0; i < d.c; ++i) {
    std::memcpy(dst_pad + i * d.npad() + d.p, src + i * d.n, d.n * sizeof(T));
    wrap_row(dst_pad + i * d.npad(), d.n, d.p);
  }
}

template <Act A, typename T>
inline T activate(T a) {
  if constexpr (A == Act::Relu) return a < T(0) ? T(0) : a;  // NaN propagates, as torch.relu
  else if constexpr (A == Act::Tanh) return std::tanh(a);
  else return a;
}

// act'(a) written in terms of h = act(a), so the backward needs only the stored states.
template <Act A, typename T>
inline T activation_grad(T h) {
  if constexpr (A == Act::Relu) return h > T(0) ? T(1) : T(0);
  else if constexpr (A == Act::Tanh) return T(1) - h * h;
  else return T(1);
}

// Input source of a step: the projected input u_t, or x_t V^T + bV computed on the fly.
template <typename T>
struct Input {
  const T* u = nullptr;   // [T, B, c, n]
  const T* x = nullptr;   // [T, B, n_inp]
  const T* Vt = nullptr;  // [n_inp, c*n] (V transposed once, so the projection is a few AXPYs)
  const T* bV = nullptr;  // [c*n]

  // Pointer to u_t of sample b; the projected case writes it into `buf` [c*n].
  const T* at(const Dims& d, int64_t t, int64_t b, T* buf) const {
    if (u) return u + (t * d.B + b) * d.cn();
    const int64_t cn = d.cn();
    const T* xt = x + (t * d.B + b) * d.n_inp;
    std::memcpy(buf, bV, cn * sizeof(T));
    for (int64_t q = 0; q < d.n_inp; ++q) {
      const T xq = xt[q];
      const T* vq = Vt + q * cn;
#pragma omp simd
      for (int64_t e = 0; e < cn; ++e) buf[e] += xq * vq[e];
    }
    return buf;
  }
};

template <typename T, Act A, int F>
void forward(const Dims& d, const Input<T>& in, const T* W, const T* bias, const T* h0, T* H, T* h_last) {
  const int64_t cn = d.cn(), cpad = d.c * d.npad();
  const std::vector<T> taps = pack_taps(d, W, false);
  at::parallel_for(0, d.B, 1, [&](int64_t lo, int64_t hi) {
    std::vector<T> pad(2 * cpad + kSlack), pre(cn), ubuf(in.u ? 0 : cn);
    for (int64_t b = lo; b < hi; ++b) {
      T* cur = pad.data();
      T* nxt = pad.data() + cpad;
      load_padded(d, h0 + b * cn, cur);
      for (int64_t t = 0; t < d.T; ++t) {
        conv_rows<T, F>(d, cur, taps.data(), bias, in.at(d, t, b, ubuf.data()), pre.data());
        T* out = H ? H + (t * d.B + b) * cn : (t == d.T - 1 ? h_last + b * cn : nullptr);
        for (int64_t o = 0; o < d.c; ++o) {
          T* row = nxt + o * d.npad();
          const T* a = pre.data() + o * d.n;
#pragma omp simd
          for (int64_t j = 0; j < d.n; ++j) row[d.p + j] = activate<A>(a[j]);
          wrap_row(row, d.n, d.p);
          if (out) std::memcpy(out + o * d.n, row + d.p, d.n * sizeof(T));
        }
        std::swap(cur, nxt);
      }
    }
  });
}

// Gradient outputs of the backward; the per-sample partials are [B, ...] double.
template <typename T>
struct Grads {
  T* grad_u = nullptr;         // [T, B, c, n] (plain op)
  T* grad_x = nullptr;         // [T, B, n_inp] (proj op)
  double* dW = nullptr;        // [B, c, c, f]
  double* db = nullptr;        // [B, c]
  double* dVt = nullptr;       // [B, n_inp, c*n] (proj op)
  double* dbV = nullptr;       // [B, c*n] (proj op)
  T* grad_h0 = nullptr;        // [B, c, n]
};

// gH: dL/dH [T, B, c, n], or dL/dh_T [B, c, n] alone when gH_last_only (the rest zero).
template <typename T, Act A, int F>
void backward(const Dims& d, const Input<T>& in, const T* gH, bool gH_last_only, const T* H, const T* h0, const T* W,
              const Grads<T>& g) {
  constexpr int64_t L = kLanes<T>;
  const int64_t c = d.c, n = d.n, f = d.f, p = d.p, npad = d.npad(), cn = d.cn(), cpad = c * npad;
  const int64_t nw = c * c * f;
  // Transposed, flipped taps: dL/dh_{t-1}[i, m] = sum_{o, k} Wt[i, o, k] * delta_pad[o, m + k].
  const std::vector<T> taps_t = pack_taps(d, W, true);
  const int64_t nvec = n / L;  // full vectors per ring row; the tail is one zero-padded vector

  at::parallel_for(0, d.B, 1, [&](int64_t lo, int64_t hi) {
    // chunk slots: the delta_t / padded h_{t-1} of up to kGradChunk steps, for the weight gradient
    const int64_t slot = cpad + kSlack;
    std::vector<T> delta_slots(kGradChunk * slot), hprev_slots(kGradChunk * slot), grec(cn),
        dtail(kGradChunk * c * L);
    std::vector<Vec<T>> dWv(nw);
    std::vector<double> dW_lanes(nw * L);  // [w][lane]: summed over the lanes once per sample
    std::vector<double> db_pos(cn);        // [o][j]: the bias gradient before the sum over positions
    const std::vector<T> zero_row(gH_last_only ? n : 0, T(0));  // dL/dH[t] of t < T - 1 (last-only)
    for (int64_t b = lo; b < hi; ++b) {
      double* dW = g.dW + b * nw;
      double* db = g.db + b * c;
      std::fill(grec.begin(), grec.end(), T(0));
      std::fill(dWv.begin(), dWv.end(), Vec<T>{});
      std::fill(dW_lanes.begin(), dW_lanes.end(), 0.0);
      std::fill(db_pos.begin(), db_pos.end(), 0.0);
      int64_t filled = 0;  // chunk slots in use
      for (int64_t t = d.T - 1; t >= 0; --t) {
        T* delta_pad = delta_slots.data() + filled * slot;
        const int64_t off = (t * d.B + b) * cn;
        const T* h = H + off;
        const T* hprev = t > 0 ? H + off - d.B * cn : h0 + b * cn;
        // delta_t = (dL/dH[t] + recurrent term) * act'(h_t)
        for (int64_t o = 0; o < c; ++o) {
          T* drow = delta_pad + o * npad + p;
          const T* gh = !gH_last_only ? gH + off + o * n
                                      : (t == d.T - 1 ? gH + b * cn + o * n : zero_row.data());
          const T* hr = h + o * n;
          const T* gr = grec.data() + o * n;
          double* dbr = db_pos.data() + o * n;
#pragma omp simd
          for (int64_t j = 0; j < n; ++j) {
            drow[j] = (gh[j] + gr[j]) * activation_grad<A>(hr[j]);
            dbr[j] += drow[j];
          }
          if (g.grad_u) std::memcpy(g.grad_u + off + o * n, drow, n * sizeof(T));
          wrap_row(drow - p, n, p);
        }
        if (g.grad_x) {  // input side of the fused projection
          const T* xt = in.x + (t * d.B + b) * d.n_inp;
          double* dbV = g.dbV + b * cn;
          for (int64_t o = 0; o < c; ++o) {
            const T* drow = delta_pad + o * npad + p;
#pragma omp simd
            for (int64_t j = 0; j < n; ++j) dbV[o * n + j] += drow[j];
          }
          for (int64_t q = 0; q < d.n_inp; ++q) {
            const T* vq = in.Vt + q * cn;
            double* dvq = g.dVt + (b * d.n_inp + q) * cn;
            const double xq = xt[q];
            double s = 0;
            for (int64_t o = 0; o < c; ++o) {
              const T* drow = delta_pad + o * npad + p;
#pragma omp simd reduction(+ : s)
              for (int64_t j = 0; j < n; ++j) {
                s += drow[j] * vq[o * n + j];
                dvq[o * n + j] += xq * drow[j];
              }
            }
            g.grad_x[(t * d.B + b) * d.n_inp + q] = static_cast<T>(s);
          }
        }
        // dW[o, i, k] += sum_j delta[o, j] * hprev_pad[i, j + k]: vector partials per weight, once
        // the chunk is full (or the sequence is done)
        load_padded(d, hprev, hprev_slots.data() + filled * slot);
        const int64_t rem = n - nvec * L;
        if (rem)
          for (int64_t o = 0; o < c; ++o)
            std::memcpy(dtail.data() + (filled * c + o) * L, delta_pad + o * npad + p + nvec * L, rem * sizeof(T));
        if (++filled == kGradChunk || t == 0) {
          const GradChunk<T> chunk{delta_slots.data(), hprev_slots.data(), rem ? dtail.data() : nullptr, slot, filled};
          weight_grad_chunk<T, F>(d, chunk, nvec, dWv.data());
          // move the float partials into the per-lane double accumulator
          T* part = reinterpret_cast<T*>(dWv.data());
#pragma omp simd
          for (int64_t e = 0; e < nw * L; ++e) {
            dW_lanes[e] += part[e];
            part[e] = T(0);
          }
          filled = 0;
        }
        // recurrent term for step t - 1 (at t = 0 it is dL/dh0)
        conv_rows<T, F>(d, delta_pad, taps_t.data(), static_cast<const T*>(nullptr), static_cast<const T*>(nullptr),
                  t > 0 ? grec.data() : g.grad_h0 + b * cn);
      }
      for (int64_t w = 0; w < nw; ++w)
        for (int64_t l = 0; l < L; ++l) dW[w] += dW_lanes[w * L + l];
      for (int64_t o = 0; o < c; ++o)
        for (int64_t j = 0; j < n; ++j) db[o] += db_pos[o * n + j];
    }
  });
}

// Kernel size as a compile-time constant where it is the common one (3), else 0 (read at run time).
template <typename Fn>
void dispatch_taps(int64_t f, Fn&& fn) {
  if (f == 3) fn(std::integral_constant<int, 3>{});
  else fn(std::integral_constant<int, 0>{});
}

template <typename Fn>
void dispatch_activation(Act a, Fn&& fn) {
  switch (a) {
    case Act::Relu: fn(std::integral_constant<Act, Act::Relu>{}); break;
    case Act::Tanh: fn(std::integral_constant<Act, Act::Tanh>{}); break;
    case Act::Identity: fn(std::integral_constant<Act, Act::Identity>{}); break;
  }
}

void check_cpu_dtype(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64 on CPU, got ", t.scalar_type());
}

// Sum of per-sample partials [B, m] (double) in batch order, as a [m] tensor of `dtype`.
at::Tensor reduce_batch(const at::Tensor& partial, at::ScalarType dtype) {
  return partial.sum(0).to(dtype);
}

// [B, n_inp, cn] partials -> grad_V [cn, n_inp]
at::Tensor reduce_dV(const at::Tensor& partial, at::ScalarType dtype) {
  return partial.sum(0).t().contiguous().to(dtype);
}

template <typename T>
Input<T> projected_input(const at::Tensor& x, const at::Tensor& Vt, const at::Tensor& bV) {
  Input<T> in;
  in.x = x.const_data_ptr<T>();
  in.Vt = Vt.const_data_ptr<T>();
  in.bV = bV.const_data_ptr<T>();
  return in;
}

at::Tensor run_forward(const char* op, const Dims& d, const at::Tensor& u, const at::Tensor& x, const at::Tensor& V,
                       const at::Tensor& bV, const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& h0,
                       Act act, bool return_all) {
  const at::Tensor& ref = u.defined() ? u : x;
  const auto opts = ref.options();
  if (d.T == 0) return return_all ? at::empty({0, d.B, d.c, d.n}, opts) : h0.clone();
  at::Tensor out = return_all ? at::empty({d.T, d.B, d.c, d.n}, opts) : at::empty({d.B, d.c, d.n}, opts);
  advise_huge_pages(out);
  at::Tensor Vt = V.defined() ? V.t().contiguous() : V;
  auto W = weight.contiguous(), bi = bias.contiguous(), hh = h0.contiguous();
  AT_DISPATCH_FLOATING_TYPES(ref.scalar_type(), "wave_rnn_fwd_cpu", [&] {
    Input<scalar_t> in = u.defined() ? Input<scalar_t>{u.const_data_ptr<scalar_t>()}
                                     : projected_input<scalar_t>(x, Vt, bV);
    dispatch_activation(act, [&](auto a) {
      dispatch_taps(d.f, [&](auto taps) {
        forward<scalar_t, decltype(a)::value, decltype(taps)::value>(
            d, in, W.const_data_ptr<scalar_t>(), bi.const_data_ptr<scalar_t>(), hh.const_data_ptr<scalar_t>(),
            return_all ? out.mutable_data_ptr<scalar_t>() : nullptr,
            return_all ? nullptr : out.mutable_data_ptr<scalar_t>());
      });
    });
  });
  return out;
}

}  // namespace

at::Tensor wave_rnn_fwd_cpu(const at::Tensor& u_in, const at::Tensor& weight, const at::Tensor& bias,
                            const at::Tensor& h0, c10::string_view activation, bool return_all) {
  constexpr const char* op = "phasor::wave_rnn_fwd";
  const Dims d = check_fwd(op, u_in, weight, bias, h0);
  check_cpu_dtype(op, "u", u_in);
  const Act act = parse_activation(op, activation);
  return run_forward(op, d, u_in.contiguous(), {}, {}, {}, weight, bias, h0, act, return_all);
}

at::Tensor wave_rnn_proj_fwd_cpu(const at::Tensor& x_in, const at::Tensor& V, const at::Tensor& bV,
                                 const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& h0,
                                 c10::string_view activation, bool return_all) {
  constexpr const char* op = "phasor::wave_rnn_proj_fwd";
  const Dims d = check_proj_fwd(op, x_in, V, bV, weight, bias, h0);
  check_cpu_dtype(op, "x", x_in);
  const Act act = parse_activation(op, activation);
  return run_forward(op, d, {}, x_in.contiguous(), V, bV.contiguous(), weight, bias, h0, act, return_all);
}

namespace {

// Shared body of both backward ops (x undefined: the plain op).
std::vector<at::Tensor> run_backward(const char* op, const Dims& d, const at::Tensor& gH_in, const at::Tensor& H_in,
                                     const at::Tensor& x_in, const at::Tensor& V, const at::Tensor& h0_in,
                                     const at::Tensor& weight, Act act) {
  const auto dtype = H_in.scalar_type();
  const bool proj = x_in.defined();
  const int64_t nw = d.c * d.c * d.f;
  auto gH = gH_in.contiguous(), H = H_in.contiguous(), h0 = h0_in.contiguous(), W = weight.contiguous();
  auto x = proj ? x_in.contiguous() : x_in;
  auto Vt = proj ? V.t().contiguous() : V;
  auto dopts = H.options().dtype(at::kDouble);
  at::Tensor grad_u = proj ? at::Tensor() : at::empty({d.T, d.B, d.c, d.n}, H.options());
  at::Tensor grad_x = proj ? at::empty({d.T, d.B, d.n_inp}, H.options()) : at::Tensor();
  advise_huge_pages(grad_u);
  at::Tensor grad_h0 = at::zeros({d.B, d.c, d.n}, H.options());
  at::Tensor dW = at::zeros({d.B, nw}, dopts), db = at::zeros({d.B, d.c}, dopts);
  at::Tensor dVt = proj ? at::zeros({d.B, d.n_inp, d.cn()}, dopts) : at::Tensor();
  at::Tensor dbV = proj ? at::zeros({d.B, d.cn()}, dopts) : at::Tensor();
  if (d.T > 0 && d.B > 0) {
    AT_DISPATCH_FLOATING_TYPES(dtype, "wave_rnn_bwd_cpu", [&] {
      Input<scalar_t> in;
      if (proj) in = projected_input<scalar_t>(x, Vt, Vt /* bV is not read by the backward */);
      Grads<scalar_t> g;
      g.grad_u = proj ? nullptr : grad_u.mutable_data_ptr<scalar_t>();
      g.grad_x = proj ? grad_x.mutable_data_ptr<scalar_t>() : nullptr;
      g.dW = dW.mutable_data_ptr<double>();
      g.db = db.mutable_data_ptr<double>();
      g.dVt = proj ? dVt.mutable_data_ptr<double>() : nullptr;
      g.dbV = proj ? dbV.mutable_data_ptr<double>() : nullptr;
      g.grad_h0 = grad_h0.mutable_data_ptr<scalar_t>();
      dispatch_activation(act, [&](auto a) {
        dispatch_taps(d.f, [&](auto taps) {
          backward<scalar_t, decltype(a)::value, decltype(taps)::value>(
              d, in, gH.const_data_ptr<scalar_t>(), grad_is_last_only(gH), H.const_data_ptr<scalar_t>(),
              h0.const_data_ptr<scalar_t>(), W.const_data_ptr<scalar_t>(), g);
        });
      });
    });
  }
  const auto pdt = weight.scalar_type();
  std::vector<at::Tensor> out;
  out.push_back(proj ? grad_x : grad_u);
  if (proj) {
    out.push_back(reduce_dV(dVt, V.scalar_type()));
    out.push_back(reduce_batch(dbV, V.scalar_type()));
  }
  out.push_back(reduce_batch(dW, pdt).view({d.c, d.c, d.f}));
  out.push_back(reduce_batch(db, pdt));
  out.push_back(grad_h0);
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> wave_rnn_bwd_cpu(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& h0, const at::Tensor& weight,
    c10::string_view activation) {
  constexpr const char* op = "phasor::wave_rnn_bwd";
  const Dims d = check_bwd(op, grad_H, H, h0, weight);
  check_cpu_dtype(op, "H", H);
  auto r = run_backward(op, d, grad_H, H, {}, {}, h0, weight, parse_activation(op, activation));
  return {r[0], r[1], r[2], h0_grad_for(r[3], grad_H, d.T)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> wave_rnn_proj_bwd_cpu(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& x, const at::Tensor& V,
    const at::Tensor& h0, const at::Tensor& weight, c10::string_view activation) {
  constexpr const char* op = "phasor::wave_rnn_proj_bwd";
  const Dims d = check_proj_bwd(op, grad_H, H, x, V, h0, weight);
  check_cpu_dtype(op, "x", x);
  auto r = run_backward(op, d, grad_H, H, x, V, h0, weight, parse_activation(op, activation));
  return {r[0], r[1], r[2], r[3], r[4], h0_grad_for(r[5], grad_H, d.T)};
}

}  // namespace phasor::wave::PHASOR_CPU_ISA
