// CUDA kernels of the wave-RNN recurrence: forward and BPTT backward, each with the input
// projection outside (u given) or inside (x, V, bV). Same math, outputs and semantics as
// wave_rnn_cpu_kernels.h; symbols and layouts in wave_rnn.h, design in the spec
// (wave_rnn.md §6.3-6.5).
//
// One thread block per sample (CTA-per-sample). Samples never interact, so a block runs the
// sample's whole time loop with the state in shared memory, one launch per op and one
// __syncthreads() per time step; no grid-wide barrier. Every state row is stored circularly
// padded, row[q] = h[(q - p) mod n] for q < n + 2p, so output (o, j) of the convolution reads
// rows[i][j + k] for k < f with neither a branch nor a modulo. Rows are double-buffered by the
// parity of t: step t reads one buffer and writes the other, so one barrier per step suffices.
//
// Threads own ring elements e = o * n + j (e = tid, tid + kThreads, ...), the same mapping in
// every loop and both directions: consecutive lanes touch consecutive shared and global
// addresses (conflict-free, coalesced), and per-element state that only its owner reads (the
// backward's recurrent gradient, the proj backward's dV accumulators) needs no barrier.
//
// Storage dtypes: u / x / H / grads float32, float64, float16 or bfloat16. Arithmetic, the
// on-chip state and the parameters are in A = float (double for float64), as param_dtype_for.
//
// For f = 3 and small c (the model's layers), the plain op runs the register-tiled kernels of
// wave_rnn_cuda_fast.cuh instead (weights in registers, one window load per input row and tile;
// the block kernels are bound by shared-memory loads); PHASOR_WAVE_CUDA_KERNEL=block forces the
// kernels below, which also serve every other shape and the projected ops.
//
// Parameter gradients are deterministic and use no atomics: each block accumulates its
// sample's partial over all T steps (fixed thread ownership of every accumulator, in A), writes
// it to a [B, ...] scratch, and batch_sum_kernel adds the B partials in batch order (in double).
#include "wave_rnn/wave_rnn.h"

#include "common/cuda_host.h"
#include "common/cuda_utils.cuh"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

namespace phasor::wave {
namespace {

using phasor::cuda::dispatch_dtype;
using phasor::cuda::grid_for;

using phasor::cuda::Array;
using phasor::cuda::ceil_div;
using phasor::cuda::kWarpSize;

constexpr int kThreads = 256;  // every kernel below; a multiple of 32 (warp reductions)
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMaxInp = static_cast<int>(kMaxProjInputs);  // register arrays over n_inp
static_assert(kMaxInp == 16, "warp_sum16 reduces exactly 16 values per lane");
constexpr int64_t kDefaultSmem = 48 * 1024;                // above this a kernel must opt in

// Arithmetic / parameter type for a storage type.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

__device__ __forceinline__ float dtanh(float x) { return tanhf(x); }
__device__ __forceinline__ double dtanh(double x) { return tanh(x); }

// The activation is a runtime value: the switch is uniform across the block and costs nothing
// next to the c * f products of each output.
template <typename A>
__device__ __forceinline__ A activate(Act act, A a) {
  switch (act) {
    case Act::Relu: return a < A(0) ? A(0) : a;  // NaN propagates, as torch.relu
    case Act::Tanh: return dtanh(a);
    default: return a;
  }
}

// act'(a) in terms of h = act(a), so the backward needs only the stored states (as the CPU).
template <typename A>
__device__ __forceinline__ A activation_grad(Act act, A h) {
  switch (act) {
    case Act::Relu: return h > A(0) ? A(1) : A(0);
    case Act::Tanh: return A(1) - h * h;
    default: return A(1);
  }
}

// Store the value of ring position j into a padded row: the centre slot p + j and every padding
// slot that wraps to j (one at most on each side when n >= p, several for a ring shorter than p).
template <typename A>
__device__ __forceinline__ void ring_store(A* row, int j, int n, int p, A v) {
  row[p + j] = v;
  for (int q = p + j - n; q >= 0; q -= n) row[q] = v;
  for (int q = p + j + n; q < n + 2 * p; q += n) row[q] = v;
}

// sum_{i < c, k < f} w[i * f + k] * h[i * ld + k]: one output of the circular convolution, with
// h pointing at the output's position in padded row 0. KF > 0 is a compile-time f (unrolled, one
// accumulator per tap to shorten the dependent-FMA chain); KF == 0 takes f at run time.
template <int KF, typename A>
__device__ __forceinline__ A ring_dot(const A* __restrict__ w, const A* __restrict__ h, int c, int f, int ld) {
  if constexpr (KF > 0) {
    A s[KF];
#pragma unroll
    for (int k = 0; k < KF; ++k) s[k] = A(0);
#pragma unroll 2
    for (int i = 0; i < c; ++i) {
#pragma unroll
      for (int k = 0; k < KF; ++k) s[k] += w[i * KF + k] * h[i * ld + k];
    }
    A r = s[0];
#pragma unroll
    for (int k = 1; k < KF; ++k) r += s[k];
    return r;
  } else {
    A s = A(0);
    for (int i = 0; i < c; ++i)
      for (int k = 0; k < f; ++k) s += w[i * f + k] * h[i * ld + k];
    return s;
  }
}

// f = 3 is the model's kernel (the only one the official code uses) and f = 1 a cheap special
// case; the branch is uniform across the block.
template <typename A>
__device__ __forceinline__ A ring_conv(const A* w, const A* h, int c, int f, int ld) {
  if (f == 3) return ring_dot<3>(w, h, c, f, ld);
  if (f == 1) return ring_dot<1>(w, h, c, f, ld);
  return ring_dot<0>(w, h, c, f, ld);
}

// Sums each of 16 per-lane values over the warp: a butterfly reduce-scatter (each round halves the
// values a lane keeps and adds its partner's other half) takes 8 + 4 + 2 + 1 + 1 = 16 shuffles
// for all 16 values, whatever n_inp (5 * n_inp for separate reductions: more only for
// n_inp <= 3, and once per step either way). Afterwards lanes 2q and 2q + 1 hold the sum of
// value q. Branch-free with compile-time indices only: separate reductions under `q < n_inp`
// (16 warp-synchronous regions in branches) made ptxas spill. Fixed order: deterministic.
template <typename A>
__device__ __forceinline__ A warp_sum16(Array<A, 16> v, int lane) {
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int half = 8 >> r;  // values kept after this round
    const int off = 16 >> r;  // partner lane distance; lanes with this bit set keep the upper half
    const bool upper = (lane & off) != 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (i < half) {
        const A send = upper ? v[i] : v[i + half];
        const A keep = upper ? v[i + half] : v[i];
        v[i] = keep + __shfl_xor_sync(0xffffffffu, send, off);
      }
    }
  }
  return v[0] + __shfl_xor_sync(0xffffffffu, v[0], 1);
}

// ------------------------------------------------------------------ forward

template <typename T>
struct FwdParams {
  const T* u;             // [T, B, c, n] (plain op)
  const T* x;             // [T, B, n_inp] (proj op)
  const acc_t<T>* Vt;     // [n_inp, c*n]: V transposed, so lanes of consecutive e read consecutive words
  const acc_t<T>* bV;     // [c*n]
  const acc_t<T>* W;      // [c, c, f]
  const acc_t<T>* bias;   // [c]
  const T* h0;            // [B, c, n]
  T* out;                 // H [T, B, c, n] (return_all) or h_T [B, c, n]
  int64_t steps, B;  // T (time steps), B (samples)
  int c, n, f, p, ld, n_inp;
  Act act;
  bool return_all;
  bool v_in_smem;  // proj: V^T and bV staged in shared memory (else read through L1 from global)
};

// Shared memory (elements of A), in order:
//   state  2 * c * ld   padded rows, double-buffered by the parity of t
//   W      c * c * f
//   bias   c
//   V^T|bV (n_inp + 1) * c * n   proj ops, when it fits (v_in_smem)
template <bool PROJ, typename T>
__global__ void __launch_bounds__(kThreads) wave_fwd_kernel(const FwdParams<T> P) {
  using A = acc_t<T>;
  // Raw bytes: one extern symbol for every instantiation (float and double).
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* const sm = reinterpret_cast<A*>(smem_raw);
  const int tid = static_cast<int>(threadIdx.x);
  const int c = P.c, n = P.n, f = P.f, p = P.p, ld = P.ld, n_inp = P.n_inp;
  const int cn = c * n, cf = c * f, rows = c * ld;
  const int64_t b = blockIdx.x;

  A* const Ws = sm + 2 * rows;
  A* const bs = Ws + c * cf;
  for (int i = tid; i < c * cf; i += kThreads) Ws[i] = P.W[i];
  for (int i = tid; i < c; i += kThreads) bs[i] = P.bias[i];
  const A* Vs = P.Vt;
  const A* bVs = P.bV;
  if constexpr (PROJ) {
    if (P.v_in_smem) {
      A* const v = bs + c;
      const int nv = n_inp * cn;
      for (int i = tid; i < nv + cn; i += kThreads) v[i] = i < nv ? P.Vt[i] : P.bV[i - nv];
      Vs = v;
      bVs = v + nv;
    }
  }
  for (int e = tid; e < cn; e += kThreads) {
    const int o = e / n, j = e - o * n;
    ring_store(sm + o * ld, j, n, p, static_cast<A>(P.h0[b * cn + e]));
  }
  __syncthreads();

  const int64_t tstride = P.B * cn;
  for (int64_t t = 0; t < P.steps; ++t) {
    const A* const cur = sm + (t & 1) * rows;  // h_{t-1}
    A* const nxt = sm + ((t + 1) & 1) * rows;  // h_t
    const int64_t base = t * tstride + b * cn;
    Array<A, kMaxInp> xv;  // x_t, loaded by every thread (a broadcast read)
    if constexpr (PROJ) {
      const T* xt = P.x + (t * P.B + b) * n_inp;
#pragma unroll
      for (int q = 0; q < kMaxInp; ++q) xv[q] = q < n_inp ? static_cast<A>(xt[q]) : A(0);
    }
    for (int e = tid; e < cn; e += kThreads) {
      const int o = e / n, j = e - o * n;
      A in;
      if constexpr (PROJ) {
        in = bVs[e];
#pragma unroll
        for (int q = 0; q < kMaxInp; ++q)
          if (q < n_inp) in += Vs[q * cn + e] * xv[q];
      } else {
        in = static_cast<A>(P.u[base + e]);
      }
      const A a = ring_conv(Ws + o * cf, cur + j, c, f, ld) + bs[o] + in;
      const A h = activate(P.act, a);
      ring_store(nxt + o * ld, j, n, p, h);
      if (P.return_all) {
        P.out[base + e] = static_cast<T>(h);
      } else if (t == P.steps - 1) {
        P.out[b * cn + e] = static_cast<T>(h);
      }
    }
    __syncthreads();  // h_t complete before step t + 1 reads it; step t's reads of h_{t-1} done
  }
}

// ------------------------------------------------------------------ backward

template <typename T>
struct BwdParams {
  const T* gH;          // [T, B, c, n]
  const T* H;           // [T, B, c, n]
  const T* h0;          // [B, c, n]
  const T* x;           // proj: [T, B, n_inp]
  const acc_t<T>* Vt;   // proj: [n_inp, c*n]
  const acc_t<T>* W;    // [c, c, f]
  T* grad_u;            // plain: [T, B, c, n]
  T* grad_x;            // proj: [T, B, n_inp]
  T* grad_h0;           // [B, c, n]
  acc_t<T>* part_w;     // [B, c*c*f + c]: per-sample grad_weight | grad_bias
  acc_t<T>* part_v;     // proj: [B, (n_inp + 1) * c*n]: per-sample grad_V^T [n_inp][cn] | grad_bV
  int64_t steps, B;  // T (time steps), B (samples)
  int c, n, f, p, ld, n_inp;
  int js;               // j-slices per weight-gradient sum (see below)
  Act act;
  bool gv_in_smem;      // proj: dV / dbV accumulators in shared memory (else in part_v directly)
  bool v_in_smem;       // proj: V^T staged in shared memory
};

// The sizes FwdParams and BwdParams share, from the validated dimensions.
template <typename Params>
void set_geometry(Params& P, const Dims& d, int64_t ld, Act act) {
  P.steps = d.T;
  P.B = d.B;
  P.c = static_cast<int>(d.c);
  P.n = static_cast<int>(d.n);
  P.f = static_cast<int>(d.f);
  P.p = static_cast<int>(d.p);
  P.ld = static_cast<int>(ld);
  P.n_inp = static_cast<int>(d.n_inp);
  P.act = act;
}


// Reverse time. Two phases per step t, with g = grad_H[t] + r (r = dL/dh_t from step t + 1):
//   delta(t)  owners: delta_t = g * act'(h_t) -> grad_u[t] and the padded rows D[t & 1]; the
//             padded h_{t-1} -> Hp[t & 1]; proj: dV / dbV accumulators and the warp partials of
//             grad_x[t].
//   grads(t)  owners: r for step t - 1 (transposed convolution of D, flipped taps), or grad_h0 at
//             t = 0; the weight-gradient tasks (D x Hp); threads q < n_inp: grad_x[t].
// grads(t) needs every thread's delta(t), so a barrier separates them; delta(t - 1) needs only
// the r its own thread computed in grads(t), so it follows grads(t) without one. D and Hp are
// double-buffered by parity: delta(t - 1) may write while slower threads still read D[t & 1]
// and Hp[t & 1], and the barrier before grads(t - 1) orders delta(t - 2)'s rewrite of them.
//
// Weight-gradient tasks: grad_W[o, i, k] += sum_j D[o][p + j] * Hp[i][j + k] and
// grad_bias[o] += sum_j D[o][p + j] form nw + c sums (nw = c*c*f); each is split into js
// interleaved slices (j = s, s + js, ...) so that small models still use every thread. Task
// (w, s) = w * js + s is owned by thread (w * js + s) mod kThreads for the whole sequence and
// accumulates into its own shared slot; consecutive lanes read consecutive j (or, with js = 1,
// rows an odd stride apart: see row_stride()).
//
// Shared memory (elements of A), in order:
//   D        2 * c * ld             padded delta_t, by parity
//   Hp       2 * c * ld             padded h_{t-1}, by parity
//   Wt       c * c * f              Wt[i][o][k'] = W[o][i][f - 1 - k']
//   r        c * n                  recurrent gradient, owner-only
//   gacc     (c*c*f + c) * js       weight / bias gradient accumulators
//   wpart    2 * kWarps * n_inp     proj: warp partials of grad_x, by parity
//   gv       (n_inp + 1) * c * n    proj, when it fits: dV^T | dbV accumulators, owner-only
//   Vs       n_inp * c * n          proj, when it fits: V^T
template <bool PROJ, typename T>
__global__ void __launch_bounds__(kThreads) wave_bwd_kernel(const BwdParams<T> P) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* const sm = reinterpret_cast<A*>(smem_raw);
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int c = P.c, n = P.n, f = P.f, p = P.p, ld = P.ld, n_inp = P.n_inp, js = P.js;
  const int cn = c * n, cf = c * f, nw = c * cf, rows = c * ld;
  const int ntask = (nw + c) * js;
  const int64_t b = blockIdx.x;
  const int64_t tstride = P.B * cn;
  // Locals for what the phase lambdas read: a reference capture of the kernel parameter itself
  // would take its address.
  const T* const gH = P.gH;
  const T* const H = P.H;
  const T* const h0 = P.h0;
  const T* const x = P.x;
  T* const grad_u = P.grad_u;
  T* const grad_x = P.grad_x;
  T* const grad_h0 = P.grad_h0;
  const int64_t nB = P.B;
  const Act act = P.act;

  A* const Dbuf = sm;
  A* const Hbuf = Dbuf + 2 * rows;
  A* const Wt = Hbuf + 2 * rows;
  A* const rg = Wt + nw;
  A* const gacc = rg + cn;
  A* const wpart = gacc + ntask;
  A* smem_next = wpart + (PROJ ? 2 * kWarps * n_inp : 0);

  // Flipped, transposed taps: dL/dh_{t-1}[i, m] = sum_{o, k'} Wt[i][o][k'] * D[o][m + k'], the
  // forward's branch-free convolution again (D[o][m + k'] = delta[o, (m + k' - p) mod n] and
  // k' = f - 1 - k turns (m - k + p) mod n into that).
  for (int idx = tid; idx < nw; idx += kThreads) {
    const int kk = idx % f, io = idx / f;
    const int o = io % c, i = io / c;
    Wt[idx] = P.W[(o * c + i) * f + (f - 1 - kk)];
  }
  for (int idx = tid; idx < ntask; idx += kThreads) gacc[idx] = A(0);

  A* gv = nullptr;        // proj: [n_inp + 1][cn] accumulators of dV^T | dbV
  const A* Vs = nullptr;  // proj: V^T [n_inp][cn]
  if constexpr (PROJ) {
    const int ngv = (n_inp + 1) * cn;
    if (P.gv_in_smem) {
      gv = smem_next;
      smem_next += ngv;
    } else {
      gv = P.part_v + b * ngv;  // this sample's own slice of the scratch, accumulated in place
    }
    for (int idx = tid; idx < ngv; idx += kThreads) gv[idx] = A(0);
    if (P.v_in_smem) {
      A* const v = smem_next;
      for (int idx = tid; idx < n_inp * cn; idx += kThreads) v[idx] = P.Vt[idx];
      Vs = v;
    } else {
      Vs = P.Vt;
    }
  }
  __syncthreads();

  // delta(t); `last`: t = T - 1, where no recurrent term exists and h_t is read from global
  // (later, h_t is the centre of Hp[(t + 1) & 1], written by this same thread in delta(t + 1)).
  auto delta_phase = [&](int64_t t, bool last) {
    A* const D = Dbuf + (t & 1) * rows;
    A* const Hp = Hbuf + (t & 1) * rows;
    const A* const Hnext = Hbuf + ((t + 1) & 1) * rows;
    const int64_t base = t * tstride + b * cn;
    Array<A, kMaxInp> xv, px;  // proj: x_t, and this thread's part of grad_x[t]
    if constexpr (PROJ) {
      const T* xt = x + (t * nB + b) * n_inp;
#pragma unroll
      for (int q = 0; q < kMaxInp; ++q) {
        xv[q] = q < n_inp ? static_cast<A>(xt[q]) : A(0);
        px[q] = A(0);
      }
    }
    for (int e = tid; e < cn; e += kThreads) {
      const int o = e / n, j = e - o * n;
      const A h = last ? static_cast<A>(H[base + e]) : Hnext[o * ld + p + j];
      A g = static_cast<A>(gH[base + e]);
      if (!last) g += rg[e];
      const A d = g * activation_grad(act, h);
      if constexpr (!PROJ) grad_u[base + e] = static_cast<T>(d);
      ring_store(D + o * ld, j, n, p, d);
      const A hp = t > 0 ? static_cast<A>(H[base - tstride + e]) : static_cast<A>(h0[b * cn + e]);
      ring_store(Hp + o * ld, j, n, p, hp);
      if constexpr (PROJ) {
#pragma unroll
        for (int q = 0; q < kMaxInp; ++q) {
          if (q < n_inp) {
            gv[q * cn + e] += d * xv[q];
            px[q] += d * Vs[q * cn + e];
          }
        }
        gv[n_inp * cn + e] += d;
      }
    }
    if constexpr (PROJ) {
      // Warp sums in a fixed order (then warps in index order in grads(t)).
      const A s = warp_sum16(px, lane);
      const int q = lane >> 1;
      if ((lane & 1) == 0 && q < n_inp) wpart[(t & 1) * kWarps * n_inp + warp * n_inp + q] = s;
    }
  };

  auto grads_phase = [&](int64_t t) {
    const A* const D = Dbuf + (t & 1) * rows;
    const A* const Hp = Hbuf + (t & 1) * rows;
    for (int e = tid; e < cn; e += kThreads) {
      const int i = e / n, m = e - i * n;
      const A r = ring_conv(Wt + i * cf, D + m, c, f, ld);
      if (t > 0) {
        rg[e] = r;
      } else {
        grad_h0[b * cn + e] = static_cast<T>(r);
      }
    }
    for (int task = tid; task < ntask; task += kThreads) {
      const int s = task % js, w = task / js;
      A sum = A(0);
      if (w < nw) {
        const int o = w / cf, ik = w - o * cf;
        const int i = ik / f, k = ik - i * f;
        const A* const dr = D + o * ld + p;
        const A* const hr = Hp + i * ld + k;
        for (int j = s; j < n; j += js) sum += dr[j] * hr[j];
      } else {
        const A* const dr = D + (w - nw) * ld + p;
        for (int j = s; j < n; j += js) sum += dr[j];
      }
      gacc[task] += sum;
    }
    if constexpr (PROJ) {
      if (tid < n_inp) {
        const A* const wp = wpart + (t & 1) * kWarps * n_inp + tid;
        A s = A(0);
        for (int w = 0; w < kWarps; ++w) s += wp[w * n_inp];
        grad_x[(t * nB + b) * n_inp + tid] = static_cast<T>(s);
      }
    }
  };

  // delta(T - 1); then per step: barrier, grads(t), delta(t - 1). Written as one loop so that each
  // phase has a single call site and is inlined (a second call site made nvcc emit a real call,
  // with caller-saved registers spilled around it).
  for (int64_t t = P.steps; t >= 0; --t) {
    if (t < P.steps) {
      __syncthreads();  // delta(t) complete (and, by parity, grads(t + 1) done with the other buffers)
      grads_phase(t);
    }
    if (t > 0) delta_phase(t - 1, t == P.steps);
  }
  __syncthreads();  // every accumulator final

  // This sample's partials, the js slices of each sum added in slice order.
  A* const pw = P.part_w + b * (nw + c);
  for (int w = tid; w < nw + c; w += kThreads) {
    A s = A(0);
    for (int sl = 0; sl < js; ++sl) s += gacc[w * js + sl];
    pw[w] = s;
  }
  if constexpr (PROJ) {
    if (P.gv_in_smem) {
      const int ngv = (n_inp + 1) * cn;
      A* const pv = P.part_v + b * ngv;
      for (int idx = tid; idx < ngv; idx += kThreads) pv[idx] = gv[idx];
    }
  }
}

// ------------------------------------------------------------------ batch reduction

// out[col] = sum_{r < rows} part[r * width + src(col)], summed in row (batch) order in double:
// deterministic. Columns below `split` go to dst0, the rest to dst1[col - split]. With tr > 1 the
// first `split` columns are read transposed, [tr][split / tr] -> [split / tr][tr] (dV^T -> dV).
template <typename A>
__global__ void __launch_bounds__(kThreads)
batch_sum_kernel(const A* __restrict__ part, int64_t rows, int64_t width, int64_t split, int64_t tr,
                 A* __restrict__ dst0, A* __restrict__ dst1) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (col >= width) return;
  int64_t src = col;
  if (tr > 1 && col < split) src = (col % tr) * (split / tr) + col / tr;
  double s = 0.0;
  for (int64_t r = 0; r < rows; ++r) s += static_cast<double>(part[r * width + src]);
  if (col < split) {
    dst0[col] = static_cast<A>(s);
  } else {
    dst1[col - split] = static_cast<A>(s);
  }
}

}  // namespace

}  // namespace phasor::wave

#include "wave_rnn/wave_rnn_cuda_fast.cuh"

namespace phasor::wave {
namespace {

// ------------------------------------------------------------------ host side

inline void check_cuda_dtype(const char* op, const char* name, const at::Tensor& t) {
  const auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16 || st == at::kDouble, op,
                   ": the CUDA kernel supports float32, float16, bfloat16 and float64 ", name, ", got ", st);
}


// Padded row length n + 2p, rounded up to odd: rows i * ld then start in distinct banks, which
// the weight-gradient loop (lanes on different rows at the same j when js = 1) relies on.
inline int64_t row_stride(const Dims& d) { return d.npad() | 1; }

// Largest dynamic shared memory a block of the current device may opt in to.
inline int64_t smem_optin_limit() {
  int dev = 0;
  C10_CUDA_CHECK(cudaGetDevice(&dev));
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return v;
}

inline void check_state_fits(const char* op, const Dims& d, int64_t need, int64_t limit, const char* what) {
  TORCH_CHECK(need <= limit, op, ": the CUDA kernel keeps one sample's ", what,
              " in shared memory, which for c = ", d.c, " channels, n = ", d.n, " ring positions and f = ", d.f,
              " taps needs ", need, " bytes, more than this device's ", limit,
              " bytes per block; use fewer channels or a shorter ring, or run on the CPU");
}

template <typename Kernel>
void allow_smem(Kernel* kernel, int64_t bytes) {
  if (bytes > kDefaultSmem) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(bytes)));
  }
}

// PHASOR_WAVE_CUDA_KERNEL: unset, "" or "auto" = the register-tiled kernels (wave_rnn_cuda_fast.cuh)
// where they apply (plain op, f = 3, c <= their bound, shared memory fits), else the block kernels;
// "block" = always the block kernels. Read on every call so tests and benchmarks can switch.
enum class KernelChoice { kAuto, kBlock };

KernelChoice kernel_choice(const char* op) {
  const char* env = std::getenv("PHASOR_WAVE_CUDA_KERNEL");
  const std::string_view v = env ? env : "";
  if (v.empty() || v == "auto") return KernelChoice::kAuto;
  if (v == "block") return KernelChoice::kBlock;
  TORCH_CHECK_VALUE(false, op, ": PHASOR_WAVE_CUDA_KERNEL must be auto or block, got '", std::string(v), "'");
}

// Largest c of the fast kernels: the forward holds c * 3 weights per thread, the backward up to
// CM = 16 twice that (flipped taps and the weight-gradient accumulators), within 255 registers and
// no spills; the float backward at CM = 32 splits the two between thread teams (see the .cuh).
template <typename A>
constexpr int kFastFwdMaxC = std::is_same_v<A, double> ? 16 : 32;
template <typename A>
constexpr int kFastBwdMaxC = std::is_same_v<A, double> ? 8 : 32;

struct FastPlan {
  int cm = 0;  // the kernel's compile-time channel bound; 0: the fast kernels do not apply
  fast::FastGeo geo{};
  int64_t bytes = 0;
};

// Smallest x >= lo that is a multiple of unit with x / unit odd: rows start 16 bytes apart modulo
// an odd number of 16-byte bank groups, so 8 lanes on 8 consecutive rows hit distinct banks.
inline int64_t odd_multiple(int64_t lo, int64_t unit) {
  int64_t x = ceil_div<int64_t>(lo, unit);
  if (x % 2 == 0) ++x;
  return x * unit;
}

template <typename T>
FastPlan plan_fast(const Dims& d, bool backward, int64_t limit, std::initializer_list<const void*> srcs,
                   const void* dst) {
  using A = acc_t<T>;
  FastPlan fp;
  const int max_c = backward ? kFastBwdMaxC<A> : kFastFwdMaxC<A>;
  if (d.f != 3 || d.c > max_c || d.n > (1 << 20)) return fp;
  fast::FastGeo& g = fp.geo;
  const int64_t ntiles = ceil_div<int64_t>(d.n, fast::kRJ);
  const int64_t ld = odd_multiple(fast::kP0 + fast::kRJ * ntiles + 1, static_cast<int64_t>(16 / sizeof(A)));
  const int64_t ldu = odd_multiple(fast::kRJ * ntiles, static_cast<int64_t>(16 / sizeof(T)));
  const int64_t ldr = odd_multiple(fast::kRJ * ntiles, static_cast<int64_t>(16 / sizeof(A)));
  const int64_t state = (backward ? 4 * d.c * ld + d.c * ldr : 2 * d.c * ld) * static_cast<int64_t>(sizeof(A));
  const int64_t ring = fast::kStages * (backward ? 2 : 1) * d.c * ldu * static_cast<int64_t>(sizeof(T));
  const int cm = d.c <= 16 ? (backward && std::is_same_v<A, double> ? kFastBwdMaxC<A> : 16) : max_c;
  const int64_t jg = (backward ? fast::bwd_team_threads(cm) : fast::kFastThreads) / d.c;
  const int64_t scratch = backward ? jg * (d.c * d.c * 3 + d.c) * static_cast<int64_t>(sizeof(A)) : 0;
  fp.bytes = std::max(state + ring, scratch);
  if (fp.bytes > limit) return fp;
  bool aligned16 = (d.n * static_cast<int64_t>(sizeof(T))) % 16 == 0;
  for (const void* p : srcs) aligned16 = aligned16 && reinterpret_cast<uintptr_t>(p) % 16 == 0;
  g.ntiles = static_cast<int>(ntiles);
  g.JG = static_cast<int>(jg);
  g.ld = static_cast<int>(ld);
  g.ldu = static_cast<int>(ldu);
  g.ldr = static_cast<int>(ldr);
  g.stage_mode = aligned16 ? fast::kStageVec16 : (sizeof(T) >= 4 ? fast::kStageElem : fast::kStageSync);
  g.vec_out = d.n % 4 == 0 && reinterpret_cast<uintptr_t>(dst) % alignof(fast::V4<T>) == 0;
  g.state_bytes = static_cast<int>(state);
  fp.cm = cm;
  return fp;
}

// Sum the [rows, width] partials into dst0 (first split columns) and dst1 (the rest).
template <typename A>
void launch_batch_sum(const char* op, const at::Tensor& part, int64_t rows, int64_t width, int64_t split,
                      int64_t tr, A* dst0, A* dst1, cudaStream_t stream) {
  if (width == 0) return;
  batch_sum_kernel<A><<<grid_for(ceil_div<int64_t>(width, kThreads), op, "gradient columns"), kThreads, 0,
                        stream>>>(part.const_data_ptr<A>(), rows, width, split, tr, dst0, dst1);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Shared body of both forward ops (x undefined: the plain op). Inputs already contiguous.
at::Tensor run_forward(const char* op, const Dims& d, const at::Tensor& u, const at::Tensor& x,
                       const at::Tensor& V, const at::Tensor& bV, const at::Tensor& weight,
                       const at::Tensor& bias, const at::Tensor& h0, Act act, bool return_all) {
  const bool proj = x.defined();
  const at::Tensor& ref = proj ? x : u;
  const auto opts = ref.options();
  if (d.T == 0) return return_all ? at::empty({0, d.B, d.c, d.n}, opts) : h0.clone();
  at::Tensor out = return_all ? at::empty({d.T, d.B, d.c, d.n}, opts) : at::empty({d.B, d.c, d.n}, opts);
  if (d.B == 0) return out;
  const at::Tensor Vt = proj ? V.t().contiguous() : at::Tensor();
  const unsigned grid = grid_for(d.B, op, "samples");
  const int64_t limit = smem_optin_limit();
  auto stream = c10::cuda::getCurrentCUDAStream();

  const bool try_fast = !proj && kernel_choice(op) == KernelChoice::kAuto;
  dispatch_dtype(ref.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    if (try_fast) {
      const FastPlan fp = plan_fast<T>(d, false, limit, {u.const_data_ptr()}, out.const_data_ptr());
      if (fp.cm > 0) {
        FwdParams<T> P{};
        P.u = u.const_data_ptr<T>();
        P.W = weight.const_data_ptr<A>();
        P.bias = bias.const_data_ptr<A>();
        P.h0 = h0.const_data_ptr<T>();
        P.out = out.mutable_data_ptr<T>();
        set_geometry(P, d, fp.geo.ld, act);
        P.return_all = return_all;
        auto launch = [&](auto cm_tag) {
          constexpr int CM = decltype(cm_tag)::value;
          auto* kernel = fast::wave_fwd_fast_kernel<T, CM>;
          allow_smem(kernel, fp.bytes);
          kernel<<<grid, fast::kFastThreads, fp.bytes, stream>>>(P, fp.geo);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if (fp.cm == 16) launch(std::integral_constant<int, 16>{});
        else if constexpr (!std::is_same_v<A, double>) launch(std::integral_constant<int, 32>{});
        return;
      }
    }
    const int64_t ld = row_stride(d);
    const int64_t need = (2 * d.c * ld + d.c * d.c * d.f + d.c) * static_cast<int64_t>(sizeof(A));
    check_state_fits(op, d, need, limit, "state (two padded copies) and weight");
    const int64_t v_bytes = proj ? (d.n_inp + 1) * d.cn() * static_cast<int64_t>(sizeof(A)) : 0;
    const bool v_in_smem = proj && need + v_bytes <= limit;
    const int64_t bytes = need + (v_in_smem ? v_bytes : 0);

    FwdParams<T> P{};
    P.u = proj ? nullptr : u.const_data_ptr<T>();
    P.x = proj ? x.const_data_ptr<T>() : nullptr;
    P.Vt = proj ? Vt.const_data_ptr<A>() : nullptr;
    P.bV = proj ? bV.const_data_ptr<A>() : nullptr;
    P.W = weight.const_data_ptr<A>();
    P.bias = bias.const_data_ptr<A>();
    P.h0 = h0.const_data_ptr<T>();
    P.out = out.mutable_data_ptr<T>();
    set_geometry(P, d, ld, act);
    P.return_all = return_all;
    P.v_in_smem = v_in_smem;
    auto launch = [&](auto proj_tag) {
      constexpr bool PR = decltype(proj_tag)::value;
      allow_smem(wave_fwd_kernel<PR, T>, bytes);
      wave_fwd_kernel<PR, T><<<grid, kThreads, bytes, stream>>>(P);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (proj) launch(std::true_type{}); else launch(std::false_type{});
  });
  return out;
}

// Shared body of both backward ops (x undefined: the plain op). Inputs already contiguous.
// Returns {grad_u or grad_x, [grad_V, grad_bV,] grad_weight, grad_bias, grad_h0}.
std::vector<at::Tensor> run_backward(const char* op, const Dims& d, const at::Tensor& gH, const at::Tensor& H,
                                     const at::Tensor& x, const at::Tensor& V, const at::Tensor& h0,
                                     const at::Tensor& weight, Act act) {
  const bool proj = x.defined();
  const int64_t nw = d.c * d.c * d.f;
  const int64_t cn = d.cn();
  const bool run = d.T > 0 && d.B > 0;
  const int64_t part_rows = run ? d.B : 0;  // samples whose partials the kernel writes
  const auto popts = weight.options();

  at::Tensor grad_u = proj ? at::Tensor() : at::empty({d.T, d.B, d.c, d.n}, H.options());
  at::Tensor grad_x = proj ? at::empty({d.T, d.B, d.n_inp}, x.options()) : at::Tensor();
  at::Tensor grad_h0 = run ? at::empty({d.B, d.c, d.n}, h0.options()) : at::zeros({d.B, d.c, d.n}, h0.options());
  at::Tensor grad_w = at::empty({d.c, d.c, d.f}, popts);
  at::Tensor grad_b = at::empty({d.c}, popts);
  at::Tensor grad_V = proj ? at::empty({cn, d.n_inp}, V.options()) : at::Tensor();
  at::Tensor grad_bV = proj ? at::empty({cn}, V.options()) : at::Tensor();
  at::Tensor part_v = proj ? at::empty({part_rows, (d.n_inp + 1) * cn}, V.options()) : at::Tensor();
  auto stream = c10::cuda::getCurrentCUDAStream();

  const bool try_fast = !proj && run && kernel_choice(op) == KernelChoice::kAuto;
  dispatch_dtype(H.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    if (try_fast) {
      const FastPlan fp = plan_fast<T>(d, true, smem_optin_limit(),
                                       {gH.const_data_ptr(), H.const_data_ptr(), h0.const_data_ptr()},
                                       grad_u.const_data_ptr());
      if (fp.cm > 0) {
        at::Tensor part_w = at::empty({d.B, nw + d.c}, popts);
        BwdParams<T> P{};
        P.gH = gH.const_data_ptr<T>();
        P.H = H.const_data_ptr<T>();
        P.h0 = h0.const_data_ptr<T>();
        P.W = weight.const_data_ptr<A>();
        P.grad_u = grad_u.mutable_data_ptr<T>();
        P.grad_h0 = grad_h0.mutable_data_ptr<T>();
        P.part_w = part_w.mutable_data_ptr<A>();
        set_geometry(P, d, fp.geo.ld, act);
        const unsigned grid = grid_for(d.B, op, "samples");
        auto launch = [&](auto cm_tag) {
          constexpr int CM = decltype(cm_tag)::value;
          auto* kernel = fast::wave_bwd_fast_kernel<T, CM>;
          allow_smem(kernel, fp.bytes);
          kernel<<<grid, fast::kFastThreads, fp.bytes, stream>>>(P, fp.geo);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        };
        if constexpr (std::is_same_v<A, double>) {
          launch(std::integral_constant<int, kFastBwdMaxC<double>>{});
        } else {
          if (fp.cm == 16) launch(std::integral_constant<int, 16>{});
          else launch(std::integral_constant<int, kFastBwdMaxC<float>>{});
        }
        launch_batch_sum<A>(op, part_w, d.B, nw + d.c, nw, 1, grad_w.mutable_data_ptr<A>(),
                            grad_b.mutable_data_ptr<A>(), stream);
        return;
      }
    }
    at::Tensor part_w = at::empty({part_rows, nw + d.c}, popts);
    if (run) {
      const at::Tensor Vt = proj ? V.t().contiguous() : at::Tensor();
      const int64_t ld = row_stride(d);
      // Enough j-slices to give every thread a task when the model is small (see the kernel).
      const int64_t js = std::clamp<int64_t>(kThreads / (nw + d.c), 1, d.n);
      const int64_t need =
          (4 * d.c * ld + nw + cn + (nw + d.c) * js + (proj ? 2 * kWarps * d.n_inp : 0)) *
          static_cast<int64_t>(sizeof(A));
      const int64_t limit = smem_optin_limit();
      check_state_fits(op, d, need, limit, "backward state (padded delta and h_{t-1}, double-buffered) and weight");
      const int64_t gv_bytes = proj ? (d.n_inp + 1) * cn * static_cast<int64_t>(sizeof(A)) : 0;
      const int64_t v_bytes = proj ? d.n_inp * cn * static_cast<int64_t>(sizeof(A)) : 0;
      const bool gv_in_smem = proj && need + gv_bytes <= limit;
      const int64_t need_gv = need + (gv_in_smem ? gv_bytes : 0);
      const bool v_in_smem = proj && need_gv + v_bytes <= limit;
      const int64_t bytes = need_gv + (v_in_smem ? v_bytes : 0);

      BwdParams<T> P{};
      P.gH = gH.const_data_ptr<T>();
      P.H = H.const_data_ptr<T>();
      P.h0 = h0.const_data_ptr<T>();
      P.x = proj ? x.const_data_ptr<T>() : nullptr;
      P.Vt = proj ? Vt.const_data_ptr<A>() : nullptr;
      P.W = weight.const_data_ptr<A>();
      P.grad_u = proj ? nullptr : grad_u.mutable_data_ptr<T>();
      P.grad_x = proj ? grad_x.mutable_data_ptr<T>() : nullptr;
      P.grad_h0 = grad_h0.mutable_data_ptr<T>();
      P.part_w = part_w.mutable_data_ptr<A>();
      P.part_v = proj ? part_v.mutable_data_ptr<A>() : nullptr;
      set_geometry(P, d, ld, act);
      P.js = static_cast<int>(js);
      P.gv_in_smem = gv_in_smem;
      P.v_in_smem = v_in_smem;
      const unsigned grid = grid_for(d.B, op, "samples");
      auto launch = [&](auto proj_tag) {
        constexpr bool PR = decltype(proj_tag)::value;
        allow_smem(wave_bwd_kernel<PR, T>, bytes);
        wave_bwd_kernel<PR, T><<<grid, kThreads, bytes, stream>>>(P);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      };
      if (proj) launch(std::true_type{}); else launch(std::false_type{});
    }
    // With no partials (T == 0 or B == 0) these write zeros.
    launch_batch_sum<A>(op, part_w, part_rows, nw + d.c, nw, 1, grad_w.mutable_data_ptr<A>(),
                        grad_b.mutable_data_ptr<A>(), stream);
    if (proj) {
      launch_batch_sum<A>(op, part_v, part_rows, (d.n_inp + 1) * cn, d.n_inp * cn, d.n_inp,
                          grad_V.mutable_data_ptr<A>(), grad_bV.mutable_data_ptr<A>(), stream);
    }
  });

  std::vector<at::Tensor> res;
  res.push_back(proj ? grad_x : grad_u);
  if (proj) {
    res.push_back(grad_V);
    res.push_back(grad_bV);
  }
  res.push_back(grad_w);
  res.push_back(grad_b);
  res.push_back(grad_h0);
  return res;
}

at::Tensor wave_rnn_fwd_cuda(const at::Tensor& u, const at::Tensor& weight, const at::Tensor& bias,
                             const at::Tensor& h0, c10::string_view activation, bool return_all) {
  constexpr const char* op = "phasor::wave_rnn_fwd";
  const Dims d = check_fwd(op, u, weight, bias, h0);
  check_cuda_dtype(op, "u", u);
  const Act act = parse_activation(op, activation);
  c10::cuda::CUDAGuard guard(u.device());
  return run_forward(op, d, u.contiguous(), at::Tensor(), at::Tensor(), at::Tensor(), weight.contiguous(),
                     bias.contiguous(), h0.contiguous(), act, return_all);
}

at::Tensor wave_rnn_proj_fwd_cuda(const at::Tensor& x, const at::Tensor& V, const at::Tensor& bV,
                                  const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& h0,
                                  c10::string_view activation, bool return_all) {
  constexpr const char* op = "phasor::wave_rnn_proj_fwd";
  const Dims d = check_proj_fwd(op, x, V, bV, weight, bias, h0);
  check_cuda_dtype(op, "x", x);
  const Act act = parse_activation(op, activation);
  c10::cuda::CUDAGuard guard(x.device());
  return run_forward(op, d, at::Tensor(), x.contiguous(), V, bV.contiguous(), weight.contiguous(),
                     bias.contiguous(), h0.contiguous(), act, return_all);
}

// The kernels read dL/dH for every step; a last-state-only gradient becomes that with zeros before
// it (one memset on the device, cheap next to the backward itself).
at::Tensor all_state_grads(const at::Tensor& grad_H, const Dims& d) {
  if (!grad_is_last_only(grad_H)) return grad_H.contiguous();
  at::Tensor full = at::zeros({d.T, d.B, d.c, d.n}, grad_H.options());
  if (d.T > 0) full.select(0, d.T - 1).copy_(grad_H);
  return full;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> wave_rnn_bwd_cuda(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& h0, const at::Tensor& weight,
    c10::string_view activation) {
  constexpr const char* op = "phasor::wave_rnn_bwd";
  const Dims d = check_bwd(op, grad_H, H, h0, weight);
  check_cuda_dtype(op, "H", H);
  const Act act = parse_activation(op, activation);
  c10::cuda::CUDAGuard guard(H.device());
  auto r = run_backward(op, d, all_state_grads(grad_H, d), H.contiguous(), at::Tensor(), at::Tensor(), h0.contiguous(),
                        weight.contiguous(), act);
  return {r[0], r[1], r[2], h0_grad_for(r[3], grad_H, d.T)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> wave_rnn_proj_bwd_cuda(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& x, const at::Tensor& V,
    const at::Tensor& h0, const at::Tensor& weight, c10::string_view activation) {
  constexpr const char* op = "phasor::wave_rnn_proj_bwd";
  const Dims d = check_proj_bwd(op, grad_H, H, x, V, h0, weight);
  check_cuda_dtype(op, "x", x);
  const Act act = parse_activation(op, activation);
  c10::cuda::CUDAGuard guard(x.device());
  auto r = run_backward(op, d, all_state_grads(grad_H, d), H.contiguous(), x.contiguous(), V, h0.contiguous(),
                        weight.contiguous(), act);
  return {r[0], r[1], r[2], r[3], r[4], h0_grad_for(r[5], grad_H, d.T)};
}

}  // namespace

TORCH_LIBRARY_IMPL(phasor, CUDA, m) {
  m.impl("wave_rnn_fwd", &wave_rnn_fwd_cuda);
  m.impl("wave_rnn_proj_fwd", &wave_rnn_proj_fwd_cuda);
  m.impl("wave_rnn_bwd", &wave_rnn_bwd_cuda);
  m.impl("wave_rnn_proj_bwd", &wave_rnn_proj_bwd_cuda);
}

}  // namespace phasor::wave
