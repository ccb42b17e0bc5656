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
// Storage dtypes: float32/float64 compute in their own type; bf16/fp16 (S) compute in float32 (T): q, k,
// v, dO and O are converted where the kernel already makes its per-call copies (the transforms into
// q~, k~, v~, do~), the results where the final transforms write them, so the tile loops only see T.
// Parts: gta_cpu_tiles.h (tile products, exp), gta_cpu_geometry.h (per-token transforms), gta_cpu_se3_grad.h.
#include "gta/gta_cpu_entry.h"

#include "common/cpu_scratch.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#ifndef PHASOR_CPU_ISA
#error "define PHASOR_CPU_ISA (the namespace of this instruction-set variant) before including"
#endif

// The base build passes 32-byte vectors between inline helpers in two SSE halves; GCC warns that this
// differs from the AVX calling convention, which no caller outside this file ever sees.
#pragma GCC diagnostic ignored "-Wpsabi"

// 64-byte vectors in the AVX-512 build (measured 3-6% faster than 32-byte ones at head dim 64, on a CPU
// that splits them into two 256-bit halves), 32-byte ones elsewhere and in gta_cpu_ymm_avx512.cpp.
#if defined(PHASOR_GTA_VEC_BYTES)
#define PHASOR_VEC_BYTES PHASOR_GTA_VEC_BYTES
#elif defined(__AVX512F__)
#define PHASOR_VEC_BYTES 64
#else
#define PHASOR_VEC_BYTES 32
#endif
#include "common/cpu_vec.h"

#include "gta/gta_cpu_tiles.h"
#include "gta/gta_cpu_geometry.h"
#include "gta/gta_cpu_se3_grad.h"

namespace phasor::gta::PHASOR_CPU_ISA {
namespace {

template <typename T, typename S>
void forward(const Dims& D, const Geo<T>& g, const S* q, const T* ktT, const T* vt, const bool* mask_all, T scale,
             bool v_transform, S* out, T* lse) {
  const int64_t d = D.d, nqt = (D.Nq + kBQ - 1) / kBQ, nkt = (D.Nk + kBK - 1) / kBK;
  const T ninf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, D.B * D.H * nqt, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> qt(kBQ * d), acc(kBQ * d), s(kBQ * kBK), m(kBQ), l(kBQ);
    T buf[kMaxHeadDim];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t bh = item / nqt, i0 = (item % nqt) * kBQ, b = bh / D.H;
      const int64_t nq = std::min(kBQ, D.Nq - i0);
      const S* qb = q + (bh * D.Nq + i0) * d;
      const T* ktTb = ktT + bh * nkt * d * kBK;
      const T* vtb = vt + bh * D.Nk * d;
      const bool* mask = mask_all ? mask_all + b * D.Nk : nullptr;
      for (int64_t r = 0; r < nq; ++r) {
        apply_token(D, q_op(D, g, b, i0 + r, true, T(1)), scale, as_compute(qb + r * d, buf, d), qt.data() + r * d);
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
        S* orow = out + (bh * D.Nq + i0 + r) * d;
        T* ar = acc.data() + r * d;
        if (l[r] == T(0)) {  // no key to attend to: output 0, lse -inf
          for (int64_t c = 0; c < d; ++c) orow[c] = S(0);
          lse[bh * D.Nq + i0 + r] = ninf;
          continue;
        }
        const T inv = T(1) / l[r];
        if (v_transform) apply_token_as(D, q_op(D, g, b, i0 + r, false, T(-1)), inv, ar, orow, buf);
        else for (int64_t c = 0; c < d; ++c) orow[c] = S(inv * ar[c]);
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

// Where a gradient accumulates in T: the output itself when it is stored as T, else the scratch.
template <typename T, typename S>
inline T* accumulator(S* out, T* scratch) {
  if constexpr (std::is_same_v<S, T>) return out;
  else return scratch;
}

// Tensor options of the compute dtype T (float32 for bf16/fp16 storage).
template <typename T>
at::TensorOptions compute_options(const at::Tensor& like) {
  return like.options().dtype(c10::CppTypeToScalarType<T>::value);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> gta_fwd_cpu(const Dims& D, const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const GeoTensors& geo,
                                               const std::optional<at::Tensor>& key_mask, double scale,
                                               bool v_transform) {
  auto out = at::empty(q.sizes(), q.options());
  at::Tensor lse;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "gta_attention_fwd", [&] {
    using S = scalar_t;
    using T = at::opmath_type<S>;
    lse = at::empty({D.B, D.H, D.Nq}, compute_options<T>(q));
    GeoData<T> gd(D, geo);
    const Geo<T>& g = gd.g;
    const bool* mask = key_mask ? key_mask->data_ptr<bool>() : nullptr;
    const size_t kv_bytes = size_t(k.numel()) * sizeof(T);
    CpuScratch scratch({kv_bytes, kv_bytes, size_t(D.B * D.H * ((D.Nk + kBK - 1) / kBK) * D.d * kBK) * sizeof(T)});
    T *kt = scratch.get<T>(0), *vt = scratch.get<T>(1), *ktT = scratch.get<T>(2);
    transform_kv(D, g, k.data_ptr<S>(), v.data_ptr<S>(), v_transform, kt, vt);
    transpose_key_tiles(D, kt, ktT);
    forward(D, g, q.data_ptr<S>(), ktT, vt, mask, T(scale), v_transform, out.data_ptr<S>(), lse.data_ptr<T>());
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "gta_attention_bwd", [&] {
    using S = scalar_t;
    using T = at::opmath_type<S>;
    // bf16/fp16: dQ~, dK~, dV~ accumulate in T scratch and the final transforms store them as S; in
    // float32/float64 they accumulate in the outputs and are transformed in place.
    constexpr bool kSame = std::is_same_v<S, T>;
    const size_t q_bytes = size_t(q.numel()) * sizeof(T), kv_bytes = size_t(k.numel()) * sizeof(T);
    const size_t q_acc = kSame ? 0 : q_bytes, kv_acc = kSame ? 0 : kv_bytes;
    CpuScratch scratch({q_bytes, q_bytes, size_t(D.B * D.H * D.Nq) * sizeof(T), kv_bytes, kv_bytes, q_acc, kv_acc,
                        kv_acc});
    T *qtp = scratch.get<T>(0), *dotp = scratch.get<T>(1), *Dvp = scratch.get<T>(2);
    T *ktp = scratch.get<T>(3), *vtp = scratch.get<T>(4);
    S *dqp = dq.data_ptr<S>(), *dkp = dk.data_ptr<S>(), *dvp = dv.data_ptr<S>();
    T *dqt = accumulator(dqp, scratch.get<T>(5)), *dkt = accumulator(dkp, scratch.get<T>(6));
    T* dvt = accumulator(dvp, scratch.get<T>(7));
    // The SE(3) gradient needs o~ (the output before P). It is P^-1 O where P is invertible, which saves a
    // sixth tile product; otherwise it is recomputed as P V~ with the other sums.
    const std::vector<Double4> q_inv =
        v_transform && D.se3 > 0 ? query_se3_inverses(D, geo.q_se3.data_ptr<T>()) : std::vector<Double4>();
    const bool need_ot = v_transform && D.se3 > 0 && q_inv.empty();
    auto ot = need_ot ? at::empty(q.sizes(), compute_options<T>(q)) : at::Tensor();
    GeoData<T> gd(D, geo);
    const Geo<T>& g = gd.g;
    const bool* mask = key_mask ? key_mask->data_ptr<bool>() : nullptr;
    const int64_t d = D.d;
    const S* qp = q.data_ptr<S>();
    const S* gop = grad_out.data_ptr<S>();
    const S* op = out.data_ptr<S>();
    // query-side prologue: q~ (scaled), do~ = P^T dO, and D_i = dO_i . O_i (= do~_i . o~_i)
    at::parallel_for(0, D.B * D.H * D.Nq, 256, [&](int64_t begin, int64_t end) {
      T qbuf[kMaxHeadDim], gbuf[kMaxHeadDim], obuf[kMaxHeadDim];
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / (D.H * D.Nq), i = row % D.Nq;
        const T* go = as_compute(gop + row * d, gbuf, d);
        apply_token(D, q_op(D, g, b, i, true, T(1)), T(scale), as_compute(qp + row * d, qbuf, d), qtp + row * d);
        if (v_transform) apply_token(D, q_op(D, g, b, i, true, T(1)), T(1), go, dotp + row * d);
        else for (int64_t c = 0; c < d; ++c) dotp[row * d + c] = go[c];
        Dvp[row] = dot(go, as_compute(op + row * d, obuf, d), d);
      }
    });
    transform_kv(D, g, k.data_ptr<S>(), v.data_ptr<S>(), v_transform, ktp, vtp);
    T* otp = need_ot ? ot.data_ptr<T>() : nullptr;
    if (D.B * D.H >= at::get_num_threads()) {  // one pass
      backward_kv(D, qtp, dotp, Dvp, lse.data_ptr<T>(), ktp, vtp, mask, T(scale), dkt, dvt, dqt, otp);
    } else {  // few (batch, head) pairs: parallel over key tiles, then over query tiles
      backward_kv(D, qtp, dotp, Dvp, lse.data_ptr<T>(), ktp, vtp, mask, T(scale), dkt, dvt,
                  static_cast<T*>(nullptr), static_cast<T*>(nullptr));
      backward_q(D, qtp, dotp, Dvp, lse.data_ptr<T>(), ktp, vtp, mask, T(scale), dqt, otp);
    }
    // per (batch, view): 4x4 gradients in a fixed order, then the transposed transforms (in place when
    // S is T, else from the T scratch into the S outputs)
    const S *kp = k.data_ptr<S>(), *vp = v.data_ptr<S>();
    at::parallel_for(0, D.B * D.Vq, 1, [&](int64_t begin, int64_t end) {
      T buf[kMaxHeadDim];
      for (int64_t bv = begin; bv < end; ++bv) {
        const int64_t b = bv / D.Vq, t0 = (bv % D.Vq) * D.tq(), t1 = t0 + D.tq();
        Double4 acc[4] = {};
        add_outer4(D, qp, dqt, b, D.Nq, t0, t1, acc);  // q~ = P^T q: dP += q dq~^T
        if (need_ot) add_outer4(D, gop, ot.data_ptr<T>(), b, D.Nq, t0, t1, acc);  // O = P o~: dP += dO o~^T
        else if (!q_inv.empty()) add_outer4(D, gop, op, b, D.Nq, t0, t1, acc, q_inv.data() + bv * 4);
        store_outer4(acc, dq_se3.data_ptr<T>() + bv * 16);
        for (int64_t h = 0; h < D.H; ++h)
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t off = ((b * D.H + h) * D.Nq + t) * d;
            apply_token_as(D, q_op(D, g, b, t, false, T(-1)), T(1), dqt + off, dqp + off, buf);
          }
      }
    });
    at::parallel_for(0, D.B * D.Vk, 1, [&](int64_t begin, int64_t end) {
      T buf[kMaxHeadDim];
      for (int64_t bv = begin; bv < end; ++bv) {
        const int64_t b = bv / D.Vk, t0 = (bv % D.Vk) * D.tk(), t1 = t0 + D.tk();
        Double4 acc[4] = {};
        add_outer4(D, dkt, kp, b, D.Nk, t0, t1, acc);  // k~ = P^-1 k: dP^-1 += dk~ k^T
        if (v_transform) add_outer4(D, dvt, vp, b, D.Nk, t0, t1, acc);
        store_outer4(acc, dk_se3.data_ptr<T>() + bv * 16);
        for (int64_t h = 0; h < D.H; ++h)
          for (int64_t t = t0; t < t1; ++t) {
            const int64_t off = ((b * D.H + h) * D.Nk + t) * d;
            const auto kop = k_op(D, g, b, t, true, T(-1));
            apply_token_as(D, kop, T(1), dkt + off, dkp + off, buf);
            if (v_transform) apply_token_as(D, kop, T(1), dvt + off, dvp + off, buf);
            else if constexpr (!kSame)
              for (int64_t c = 0; c < d; ++c) dvp[off + c] = S(dvt[off + c]);
          }
      }
    });
  });
  return {dq, dk, dv, dq_se3, dk_se3};
}

}  // namespace phasor::gta::PHASOR_CPU_ISA
