// Register-tiled fast path of the wave-RNN CUDA kernels for f = 3 and c <= 32 (plain op, u given).
// Included by wave_rnn_cuda.cu after its shared helpers (acc_t, activate, activation_grad,
// FwdParams, BwdParams); the block kernels there stay the fallback and the reference.
//
// Why: the block kernel reloads the c * f weights from shared memory for every output, so it is
// bound by shared-memory loads (~1 load per FMA). Here a thread owns one output channel o and
// tiles of kRJ = 4 consecutive ring positions; it keeps W[o, :, :] (c * 3 values) in registers
// and reads each input row once per tile as a 6-wide window (one 16-byte load + two scalars) that
// feeds 12 FMAs. Consecutive lanes take consecutive o (o = tid % c), so a warp's window loads hit
// one or two addresses (broadcast) and the tile stores land in distinct banks.
//
// Index map (checked by tests/wave_rnn/test_wave_rnn_cuda_fast_emulation.py, which mirrors it on the host):
//   thread tid: o = tid % c, jg = tid / c, active iff jg < JG = kFastThreads / c;
//   tiles jt = jg, jg + JG, ... < ntiles = ceil(n / 4), positions j0 = 4 jt .. j0 + 3 (< n stored).
//   padded state row (ld elements): row[kP0 + j] = h[j], row[kP0 - 1] = h[n - 1],
//   row[kP0 + n] = h[0]; the window of tile j0 is row[j0 + 3 .. j0 + 8] = h[j0 - 1 .. j0 + 4]
//   (mod n for the positions < n that outputs need). Slots past kP0 + n stay zero.
//
// Inputs stream through a kStages-deep shared ring filled by cp.async (16-byte chunks per row where
// aligned, else one element per copy; 16-bit types with unaligned rows load synchronously), so
// global latency hides behind kStages - 2 steps of compute. Entry e is in slot e % kStages; each
// thread waits for its own copies of the next step's entries before the per-step barrier, which
// publishes them. Outputs are written from the padded state rows after a barrier, coalesced.
//
// Weight gradient (backward): each thread accumulates gW[o, :, :] and grad_bias[o] over its tiles
// and all T steps in registers; at the end the block adds its JG tile groups in group order into
// the sample's partial row, and batch_sum_kernel adds the B rows in batch order (deterministic,
// no atomics).
//
// Backward for 16 < c <= 32 (CM = 32): the flipped taps and the gW accumulators (2 * 96 floats)
// do not fit one thread's registers, so the block splits into two teams of 128 threads (warps
// 0-3 and 4-7), each with the tile map above over its own 128 threads (JG = 128 / c): the
// "transpose" team keeps the flipped taps and computes delta and r (it owns the r rows), the
// "weight" team keeps the gW accumulators and stages h_{t-1}. Each thread thus holds c * 3
// values, as in the forward at c = 32; both teams cover every tile, so the FMA count is unchanged.
#pragma once

namespace phasor::wave::fast {

constexpr int kFastThreads = 256;
constexpr int kRJ = 4;      // ring positions per tile
constexpr int kP0 = 4;      // left padding of a state row: keeps every tile's centre 16-byte aligned
constexpr int kStages = 5;  // input ring depth (>= 3: the backward reads entries s and s + 1 at step s)

// Threads per backward team (see above): the whole block up to CM = 16, else half of it.
constexpr int bwd_team_threads(int cm) { return cm > 16 ? kFastThreads / 2 : kFastThreads; }

enum StageMode : int { kStageVec16 = 0, kStageElem = 1, kStageSync = 2 };

// Geometry the host computes once (see fast_geometry); strides are in elements of their region.
struct FastGeo {
  int ntiles;      // ceil(n / kRJ)
  int JG;          // tile groups: kFastThreads / c (backward: bwd_team_threads(CM) / c)
  int ld;          // state row stride (A), >= kP0 + 4 * ntiles + 1
  int ldu;         // staging row stride (T), >= 4 * ntiles
  int ldr;         // recurrent-gradient row stride (A), >= 4 * ntiles (backward)
  int stage_mode;  // StageMode
  int vec_out;     // outputs written 4 elements at a time (n % 4 == 0, aligned)
  int state_bytes; // bytes of the A regions before the staging ring
};

template <typename T>
struct alignas(4 * sizeof(T) < 16 ? 4 * sizeof(T) : 16) V4 {
  T v[4];
};

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src) {
  static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(smem_u32(dst)), "l"(src), "n"(BYTES)
               : "memory");
}

__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Copy c rows of n elements (global, contiguous) into a staging slot with row stride ldu.
template <typename T>
__device__ __forceinline__ void stage_rows(T* dst, const T* __restrict__ src, int c, int n, int ldu, int mode,
                                           int tid) {
  if (mode == kStageVec16) {
    constexpr int E = 16 / static_cast<int>(sizeof(T));
    const int cpr = n / E;  // n * sizeof(T) is a multiple of 16 in this mode
    for (int q = tid; q < c * cpr; q += kFastThreads) {
      const int o = q / cpr, r = q - o * cpr;
      cp_async<16>(dst + o * ldu + r * E, src + o * n + r * E);
    }
  } else if (mode == kStageElem) {
    if constexpr (sizeof(T) == 4 || sizeof(T) == 8) {
      for (int e = tid; e < c * n; e += kFastThreads) {
        const int o = e / n, j = e - o * n;
        cp_async<static_cast<int>(sizeof(T))>(dst + o * ldu + j, src + e);
      }
    }
  } else {
    for (int e = tid; e < c * n; e += kFastThreads) {
      const int o = e / n, j = e - o * n;
      dst[o * ldu + j] = src[e];
    }
  }
}

// Write the c x n centre of padded rows (A) to global (T), coalesced.
template <typename T, typename A>
__device__ __forceinline__ void write_rows(T* __restrict__ dst, const A* rows, int c, int n, int ld, bool vec,
                                           int tid) {
  if (vec) {
    const int cpr = n / 4;
    for (int q = tid; q < c * cpr; q += kFastThreads) {
      const int o = q / cpr, j = (q - o * cpr) * 4;
      const V4<A> v = *reinterpret_cast<const V4<A>*>(rows + o * ld + kP0 + j);
      V4<T> w;
#pragma unroll
      for (int r = 0; r < 4; ++r) w.v[r] = static_cast<T>(v.v[r]);
      *reinterpret_cast<V4<T>*>(dst + o * n + j) = w;
    }
  } else {
    for (int e = tid; e < c * n; e += kFastThreads) {
      const int o = e / n, j = e - o * n;
      dst[e] = static_cast<T>(rows[o * ld + kP0 + j]);
    }
  }
}

// Store a tile's values (positions j0 .. j0 + 3, those < n) into a padded row, with the wrap slots.
// Partial tiles store element-wise so they never touch row[kP0 + n], owned by the tile of j = 0.
template <typename A>
__device__ __forceinline__ void store_tile(A* row, int j0, int n, const A (&h)[4]) {
  if (j0 + 4 <= n) {
    V4<A> v;
#pragma unroll
    for (int r = 0; r < 4; ++r) v.v[r] = h[r];
    *reinterpret_cast<V4<A>*>(row + kP0 + j0) = v;
  } else {
#pragma unroll
    for (int r = 0; r < 4; ++r)
      if (j0 + r < n) row[kP0 + j0 + r] = h[r];
  }
  if (j0 == 0) row[kP0 + n] = h[0];
#pragma unroll
  for (int r = 0; r < 4; ++r)
    if (j0 + r == n - 1) row[kP0 - 1] = h[r];
}

// The window h[j0 - 1 .. j0 + 4] of a padded row: one aligned 4-vector and two scalars.
template <typename A>
__device__ __forceinline__ void load_window(const A* row, int j0, A (&win)[6]) {
  const A* const p = row + kP0 - 1 + j0;
  const V4<A> m = *reinterpret_cast<const V4<A>*>(p + 1);
  win[0] = p[0];
#pragma unroll
  for (int r = 0; r < 4; ++r) win[r + 1] = m.v[r];
  win[5] = p[5];
}

// acc[r] += sum_{i < c, k < 3} w[3 i + k] * rows_i[j0 - 1 + r + k]: a tile of the circular
// convolution with the thread's weights in registers (CM = compile-time bound on c).
template <int CM, typename A>
__device__ __forceinline__ void conv_tile(const A (&w)[CM * 3], const A* rows, int ld, int c, int j0, A (&acc)[4]) {
#pragma unroll
  for (int i = 0; i < CM; ++i) {
    if (i < c) {
      A win[6];
      load_window(rows + i * ld, j0, win);
#pragma unroll
      for (int k = 0; k < 3; ++k)
#pragma unroll
        for (int r = 0; r < 4; ++r) acc[r] = fma(w[3 * i + k], win[r + k], acc[r]);
    }
  }
}

// ------------------------------------------------------------------ forward

// Shared memory: state 2 * c * ld (A, by parity of t) | kStages input slots of c * ldu (T).
template <typename T, int CM>
__global__ void __launch_bounds__(kFastThreads, 1) wave_fwd_fast_kernel(const FwdParams<T> P, const FastGeo G) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  A* const st = reinterpret_cast<A*>(smem_raw);
  T* const ring = reinterpret_cast<T*>(smem_raw + G.state_bytes);
  const int tid = static_cast<int>(threadIdx.x);
  const int c = P.c, n = P.n, ld = G.ld, ldu = G.ldu, ntiles = G.ntiles, JG = G.JG;
  const int rows = c * ld, slot = c * ldu;
  const int64_t steps = P.steps, b = blockIdx.x, cn = static_cast<int64_t>(c) * n, tstride = P.B * cn;
  const T* const u = P.u + b * cn;
  const int o = tid % c, jg = tid / c;
  const bool active = jg < JG;

  // Zero everything once: slots past a row's end are read by partial tiles and must stay finite.
  {
    const int words = (G.state_bytes + kStages * slot * static_cast<int>(sizeof(T))) / 4;
    uint32_t* const z = reinterpret_cast<uint32_t*>(smem_raw);
    for (int i = tid; i < words; i += kFastThreads) z[i] = 0u;
  }
  __syncthreads();
  for (int e = 0; e < kStages - 1; ++e) {
    if (e < steps) stage_rows(ring + e * slot, u + e * tstride, c, n, ldu, G.stage_mode, tid);
    cp_async_commit();
  }
  for (int e = tid; e < cn; e += kFastThreads) {
    const int oo = e / n, j = e - oo * n;
    A* const row = st + oo * ld;
    const A v = static_cast<A>(P.h0[b * cn + e]);
    row[kP0 + j] = v;
    if (j == n - 1) row[kP0 - 1] = v;
    if (j == 0) row[kP0 + n] = v;
  }
  A w[CM * 3];
  A bo = A(0);
#pragma unroll
  for (int q = 0; q < CM * 3; ++q) w[q] = (active && q < c * 3) ? P.W[o * c * 3 + q] : A(0);
  if (active) bo = P.bias[o];
  cp_async_wait<kStages - 2>();  // entry 0 (own copies)
  __syncthreads();

  for (int64_t t = 0; t < steps; ++t) {
    const A* const cur = st + (t & 1) * rows;  // h_{t-1}
    A* const nxt = st + ((t + 1) & 1) * rows;  // h_t
    {
      const int64_t e = t + kStages - 1;  // into the slot step t - 1 read (done: barrier)
      if (e < steps) stage_rows(ring + (e % kStages) * slot, u + e * tstride, c, n, ldu, G.stage_mode, tid);
      cp_async_commit();
    }
    const T* const us = ring + (t % kStages) * slot + o * ldu;
    if (active) {
      for (int jt = jg; jt < ntiles; jt += JG) {
        const int j0 = jt * kRJ;
        A acc[4] = {A(0), A(0), A(0), A(0)};
        conv_tile<CM>(w, cur, ld, c, j0, acc);
        const V4<T> uv = *reinterpret_cast<const V4<T>*>(us + j0);
        A h[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) h[r] = activate(P.act, acc[r] + bo + static_cast<A>(uv.v[r]));
        store_tile(nxt + o * ld, j0, n, h);
      }
    }
    if (P.return_all && t > 0) write_rows(P.out + (t - 1) * tstride + b * cn, cur, c, n, ld, G.vec_out != 0, tid);
    cp_async_wait<kStages - 2>();  // entry t + 1 (own copies), published by the barrier
    __syncthreads();
  }
  T* const dst = P.return_all ? P.out + (steps - 1) * tstride + b * cn : P.out + b * cn;
  write_rows(dst, st + (steps & 1) * rows, c, n, ld, G.vec_out != 0, tid);
}

// ------------------------------------------------------------------ backward

// The weight-gradient accumulators: `shared` (the split teams' common array) or `own`.
template <bool kShare, typename X, typename Y>
__device__ __forceinline__ X& team_regs(X& shared, Y& own) {
  if constexpr (kShare) return shared;
  else return own;
}

// Step s = 0 .. T - 1 handles t = T - 1 - s. Input entry e holds gH[T - 1 - e] (e < T) and
// Hin[e] = H[T - 1 - e] (e < T) or h0 (e = T); step s reads entries s (gH_t, h_t) and s + 1
// (h_{t-1}). Per step (tr: the transpose team, wg: the weight team; one and the same below CM = 32):
//   A(s) tr: delta_t = (gH_t + r) * act'(h_t) (masked to 0 past the ring) -> D rows;
//        wg: h_{t-1} -> Hp rows.                                    barrier
//   B(s) wg: gW[o] += delta_t[o] x windows of Hp; tr: r for t - 1 = transposed conv of D
//        (flipped taps), or grad_h0 at t = 0; all: grad_u[t] from D rows.
// D and Hp are double-buffered by the parity of t: A(s + 1) writes the other pair while slower
// threads may still be in B(s); A(s + 2) rewrites this pair after barrier s + 1. r is read and
// written only by its transpose-team owner, so it needs no barrier.
//
// Shared memory: D 2 * c * ld | Hp 2 * c * ld | r c * ldr (A) | kStages slots of 2 * c * ldu (T);
// at the end, the weight-gradient scratch JG * (c * c * 3 + c) (A) over all of it.
template <typename T, int CM>
__global__ void __launch_bounds__(kFastThreads, 1) wave_bwd_fast_kernel(const BwdParams<T> P, const FastGeo G) {
  using A = acc_t<T>;
  constexpr int kTeam = bwd_team_threads(CM);
  constexpr bool kSplit = kTeam < kFastThreads;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int tid = static_cast<int>(threadIdx.x);
  const int c = P.c, n = P.n, ld = G.ld, ldu = G.ldu, ldr = G.ldr, ntiles = G.ntiles, JG = G.JG;
  const int rows = c * ld, slot = c * ldu;
  const int64_t steps = P.steps, b = blockIdx.x, cn = static_cast<int64_t>(c) * n, tstride = P.B * cn;
  A* const Dbuf = reinterpret_cast<A*>(smem_raw);
  A* const Hbuf = Dbuf + 2 * rows;
  A* const rg = Hbuf + 2 * rows;
  T* const ring = reinterpret_cast<T*>(smem_raw + G.state_bytes);  // slot e: gH rows | H rows
  const int lt = tid % kTeam;  // index within the team; warp-aligned teams keep warps on one path
  const int o = lt % c, jg = lt / c;
  const bool active = jg < JG;
  const bool tr = active && (!kSplit || tid < kTeam);
  const bool wg = active && (!kSplit || tid >= kTeam);
  const Act act = P.act;

  {
    const int words = (G.state_bytes + kStages * 2 * slot * static_cast<int>(sizeof(T))) / 4;
    uint32_t* const z = reinterpret_cast<uint32_t*>(smem_raw);
    for (int i = tid; i < words; i += kFastThreads) z[i] = 0u;
  }
  __syncthreads();
  auto stage = [&](int64_t e) {
    T* const sl = ring + (e % kStages) * 2 * slot;
    if (e < steps) stage_rows(sl, P.gH + (steps - 1 - e) * tstride + b * cn, c, n, ldu, G.stage_mode, tid);
    const T* const hsrc = e < steps ? P.H + (steps - 1 - e) * tstride + b * cn : P.h0 + b * cn;
    if (e <= steps) stage_rows(sl + slot, hsrc, c, n, ldu, G.stage_mode, tid);
  };
  for (int e = 0; e < kStages - 1; ++e) {
    stage(e);
    cp_async_commit();
  }
  // wt: flipped taps of W[:, o, :] (this thread as input channel o); gw: gW[o, :, :] partial.
  // Split teams share one array: the weight team's wt is all zeros, i.e. a zeroed gw.
  A wt[CM * 3];
  A gw_own[kSplit ? 1 : CM * 3];
  A(&gw)[CM * 3] = team_regs<kSplit>(wt, gw_own);
  A gb = A(0);
#pragma unroll
  for (int q = 0; q < CM * 3; ++q) {
    const int o2 = q / 3, kk = q - o2 * 3;
    wt[q] = (tr && o2 < c) ? P.W[(o2 * c + o) * 3 + (2 - kk)] : A(0);
    if constexpr (!kSplit) gw[q] = A(0);
  }
  cp_async_wait<kStages - 3>();  // entries 0 and 1 (own copies)
  __syncthreads();

  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = steps - 1 - s;
    A* const D = Dbuf + (t & 1) * rows;
    A* const Hp = Hbuf + (t & 1) * rows;
    stage(s + kStages - 1);  // into the slot of entry s - 1, last read in A(s - 1) (before barrier s - 1)
    cp_async_commit();
    const T* const cur = ring + (s % kStages) * 2 * slot + o * ldu;           // gH_t | + slot: h_t
    const T* const prv = ring + ((s + 1) % kStages) * 2 * slot + slot + o * ldu;  // h_{t-1}
    if (tr) {
      for (int jt = jg; jt < ntiles; jt += JG) {
        const int j0 = jt * kRJ;
        const V4<T> gv = *reinterpret_cast<const V4<T>*>(cur + j0);
        const V4<T> hv = *reinterpret_cast<const V4<T>*>(cur + slot + j0);
        V4<A> rv{};
        if (s > 0) rv = *reinterpret_cast<const V4<A>*>(rg + o * ldr + j0);
        A d[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
          A g = static_cast<A>(gv.v[r]);
          if (s > 0) g += rv.v[r];
          d[r] = j0 + r < n ? g * activation_grad(act, static_cast<A>(hv.v[r])) : A(0);
        }
        store_tile(D + o * ld, j0, n, d);
      }
    }
    if (wg) {
      for (int jt = jg; jt < ntiles; jt += JG) {
        const int j0 = jt * kRJ;
        const V4<T> pv = *reinterpret_cast<const V4<T>*>(prv + j0);
        A hp[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) hp[r] = static_cast<A>(pv.v[r]);
        store_tile(Hp + o * ld, j0, n, hp);
      }
    }
    cp_async_wait<kStages - 3>();  // entry s + 2 (own copies), published by the barrier
    __syncthreads();
    if (wg) {
      for (int jt = jg; jt < ntiles; jt += JG) {
        const int j0 = jt * kRJ;
        const V4<A> dv = *reinterpret_cast<const V4<A>*>(D + o * ld + kP0 + j0);
        A d[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) d[r] = j0 + r < n ? dv.v[r] : A(0);  // row[kP0 + n] is the wrap
        gb += (d[0] + d[1]) + (d[2] + d[3]);
#pragma unroll
        for (int i = 0; i < CM; ++i) {
          if (i < c) {
            A win[6];
            load_window(Hp + i * ld, j0, win);
#pragma unroll
            for (int k = 0; k < 3; ++k)
#pragma unroll
              for (int r = 0; r < 4; ++r) gw[3 * i + k] = fma(d[r], win[r + k], gw[3 * i + k]);
          }
        }
      }
    }
    if (tr) {
      for (int jt = jg; jt < ntiles; jt += JG) {
        const int j0 = jt * kRJ;
        A acc[4] = {A(0), A(0), A(0), A(0)};
        conv_tile<CM>(wt, D, ld, c, j0, acc);
        if (t > 0) {
          V4<A> v;
#pragma unroll
          for (int r = 0; r < 4; ++r) v.v[r] = acc[r];
          *reinterpret_cast<V4<A>*>(rg + o * ldr + j0) = v;
        } else {
#pragma unroll
          for (int r = 0; r < 4; ++r)
            if (j0 + r < n) P.grad_h0[b * cn + o * n + j0 + r] = static_cast<T>(acc[r]);
        }
      }
    }
    write_rows(P.grad_u + t * tstride + b * cn, D, c, n, ld, G.vec_out != 0, tid);
  }
  cp_async_wait<0>();  // no copy may land in the scratch below
  __syncthreads();      // every thread done with D, Hp and the ring

  // The sample's weight-gradient partial: the JG tile groups' rows (scratch [JG][nw + c], over the
  // state regions) added in group order, so the batch sum has B rows and no atomics anywhere.
  const int nw = c * c * 3;
  A* const scratch = reinterpret_cast<A*>(smem_raw);
  if (wg) {
    A* const row = scratch + jg * (nw + c);
#pragma unroll
    for (int q = 0; q < CM * 3; ++q)
      if (q < c * 3) row[o * c * 3 + q] = gw[q];
    row[nw + o] = gb;
  }
  __syncthreads();
  A* const pw = P.part_w + b * (nw + c);
  for (int col = tid; col < nw + c; col += kFastThreads) {
    A sum = A(0);
    for (int g = 0; g < JG; ++g) sum += scratch[g * (nw + c) + col];
    pw[col] = sum;
  }
}

}  // namespace phasor::wave::fast
