// Tensor-core (mma.sync m16n8k16) forward and backward of GTA attention for float16/bfloat16 storage
// (gta_cuda_mma.cu, gta_cuda_mma_bwd.cu). gta_cuda.cu's gta_fwd_cuda / gta_bwd_cuda call them after their
// argument checks; the forward's outputs (O and the log-sum-exp) have the SIMT kernel's contract, so
// either backward consumes them, and the backward's float32 intermediates feed the shared SIMT SE(3)
// reduction and epilogue kernels.
#pragma once
#include "gta/gta_cuda_geometry.cuh"

#include <ATen/core/Tensor.h>
#include <cuda_runtime.h>

namespace phasor::gta {

// How K~ = P^-1 K and V~ = P^-1 V reach shared memory: transformed on load by every query block, or
// once per call by a pre-pass kernel into O(N) scratch that the attention kernel then copies.
// Offsets (in elements, row stride ld) of the row address `lane` gives to ldmatrix.x4 (lanes 8m .. 8m+7
// address matrix m), per operand of the 16-row x 16-column slice at the tile's origin:
//   Q (A operand, non-trans): matrices (rows 0-7, cols 0-7), (rows 8-15, cols 0-7), (rows 0-7, cols 8-15),
//     (rows 8-15, cols 8-15) = registers a0..a3 of m16n8k16;
//   K (B operands of two n-tiles, non-trans; rows = keys): (keys 0-7, ch 0-7), (keys 0-7, ch 8-15),
//     (keys 8-15, ch 0-7), (keys 8-15, ch 8-15) = b0, b1 of keys 0-7, then b0, b1 of keys 8-15;
//   V (B operands of two channel tiles, .trans; rows = keys): (keys 0-7, ch 0-7), (keys 8-15, ch 0-7),
//     (keys 0-7, ch 8-15), (keys 8-15, ch 8-15) = b0, b1 of ch 0-7, then b0, b1 of ch 8-15.
// The backward (gta_cuda_mma_bwd.cu) uses the same three patterns for other operands: q_lane for any A
// operand stored row-major (rows of K~, V~, Q~ or dO~), k_lane for any B operand whose n index is the
// shared-memory row (Q~, dO~ in S^T, dP^T; K~, V~ in S, dP), v_lane (.trans) for any B operand whose k index
// is the row (dO~, Q~ in dV~, dK~; K~, V~ in dQ~, o~).
// tests/gta/mma_layout_check.cu checks them on the host against the PTX fragment layouts.
namespace mma_layout {
__host__ __device__ constexpr int q_lane(int lane, int ld) { return ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8; }
__host__ __device__ constexpr int k_lane(int lane, int ld) { return ((lane & 7) + (lane >> 4) * 8) * ld + ((lane >> 3) & 1) * 8; }
__host__ __device__ constexpr int v_lane(int lane, int ld) { return ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8; }

// Backward (gta_cuda_mma_bwd.cu) operand offsets, shared with the host check. mma_abt: acc = A B^T with
// A and B stored row-major (k = channel): k-step ks of A at abt_a(ks), of the B rows of n-tile pair np at
// abt_b(np, ks, ld). mma_cb: acc += X B with X in C fragments and B stored k-major: the 16 rows of
// k-chunk kk, channel pair dp, at cb_b(kk, dp, ld); A register r of chunk kk repacks C fragment
// c_to_a_tile(kk, r), elements c_to_a_elem(r) and + 1 (the forward's P repacking).
__host__ __device__ constexpr int abt_a(int ks) { return ks * 16; }
__host__ __device__ constexpr int abt_b(int np, int ks, int ld) { return np * 16 * ld + ks * 16; }
__host__ __device__ constexpr int cb_b(int kk, int dp, int ld) { return kk * 16 * ld + dp * 16; }
__host__ __device__ constexpr int c_to_a_tile(int kk, int r) { return 2 * kk + (r >> 1); }
__host__ __device__ constexpr int c_to_a_elem(int r) { return 2 * (r & 1); }
// Streamed tile of the backward's inner dimension, 8 n-tiles (64 rows) where registers allow; 4 (32
// rows) for head dims 96 and 128, where the S and dP fragments of 64 rows next to two D-wide
// accumulators would exceed 255 registers.
__host__ __device__ constexpr int bwd_tile_nt(int d) { return d <= 64 ? 8 : 4; }
// Atomic-dQ variant (one kernel): the key-side warps park dS^T (and P^T) C fragments in shared memory
// ([64 keys][tm + 8], row = key, column = query): element e of n-tile n at ct_store(n, lane, e, ld) from the
// warp's first key row. Then the block's tm x D dQ~ partial is split over the 4 warps: tm / 16 query row
// groups times 64 / tm channel slices of d tm / 64 channels; warp w takes row group tb_rg(w, tm) and the
// channel pairs from tb_dp0(w, tm, d). Its A operand (16 queries x 16 keys of chunk kk, i.e. the parked
// transpose) is one ldmatrix.x4.trans at tb_a(kk, rg, ld) + k_lane(lane, ld); B as mma_cb (cb_b, v_lane).
__host__ __device__ constexpr int ct_store(int n, int lane, int e, int ld) {
  return ((lane >> 2) + 8 * (e >> 1)) * ld + n * 8 + 2 * (lane & 3) + (e & 1);
}
__host__ __device__ constexpr int tb_rg(int w, int tm) { return w % (tm / 16); }
__host__ __device__ constexpr int tb_dp0(int w, int tm, int d) { return (w / (tm / 16)) * (d * tm / 64 / 16); }
__host__ __device__ constexpr int tb_a(int kk, int rg, int ld) { return kk * 16 * ld + rg * 16; }
}  // namespace mma_layout

enum class MmaKvMode { kAuto, kOnLoad, kPrepass };

// True when the tensor-core forward takes this call: float16/bfloat16, head dim 32, 64, 96 or 128,
// at most 65535 query blocks, and a device of compute capability 8.0 or newer.
bool gta_fwd_mma_supported(at::ScalarType dtype, int64_t d, int64_t Nq, int device);

// out [B,H,Nq,d] (q's dtype) and lse [B,H,Nq] (float32) for contiguous q, k, v and float32 geometry
// (pointers in g); mask: contiguous bool [B,Nk] or undefined. Launches on `stream`.
void gta_fwd_mma(const dev::Shape& S, const dev::GeoPtrs& g, const at::Tensor& q, const at::Tensor& k,
                 const at::Tensor& v, const at::Tensor& mask, double scale, bool v_transform, MmaKvMode mode,
                 const at::Tensor& out, const at::Tensor& lse, cudaStream_t stream);

// K~ = P^-1 K and (v_transform) V~ = P^-1 V into kt / vtt (k's shape and dtype, contiguous; vtt is not
// touched without v_transform): the forward's pre-pass, so forward and backward see the same K~, V~ bits.
// k and v: contiguous, float16/bfloat16, 8-byte aligned, head dim 32/64/96/128.
void gta_kv_prepass_mma(const dev::Shape& S, const dev::GeoPtrs& g, const at::Tensor& k, const at::Tensor& v,
                        bool v_transform, const at::Tensor& kt, const at::Tensor& vtt, cudaStream_t stream);

// True when the tensor-core backward (gta_cuda_mma_bwd.cu) takes this call: the forward's conditions
// for Nq and at most 65535 key blocks of 64 (key blocks are grid.y too).
bool gta_bwd_mma_supported(at::ScalarType dtype, int64_t d, int64_t Nq, int64_t Nk, int device);

// The attention core of the backward on tensor cores, replacing the SIMT prologue, key-side and
// query-side kernels: from contiguous q, k, v, dO, O (float16/bfloat16), lse [B,H,Nq] float32 and the
// mask (contiguous bool [B,Nk] or undefined) it writes, as float32 [B,H,N,d] like the SIMT kernels,
//   dqt = dL/d(P^T q) (scale included), dkt = dL/dk~, dvt = dL/dv~ (k~ = P^-1 k, v~ = P^-1 v or v),
//   ot (when defined) = o~ = softmax(q~ k~^T) v~ in the 16-channel tiles that overlap the SE(3)
//   channels [triv, triv + se3), 0 elsewhere (the SE(3) gradient reads only those channels).
// atomic_dq false: deterministic (no atomics; a key-side and a query-side kernel). true: one key-side kernel
// also adds each key block's dq~ (and o~) share into the zeroed float32 dqt (ot) with float atomics (FA2's
// split: 5 block matmuls per tile pair instead of 8; the sum order, hence the low bits, varies run to run).
// Launches on `stream`.
void gta_bwd_mma(const dev::Shape& S, const dev::GeoPtrs& g, const at::Tensor& q, const at::Tensor& k,
                 const at::Tensor& v, const at::Tensor& dO, const at::Tensor& O, const at::Tensor& lse,
                 const at::Tensor& mask, double scale, bool v_transform, bool atomic_dq, const at::Tensor& dqt,
                 const at::Tensor& dkt, const at::Tensor& dvt, const at::Tensor& ot, cudaStream_t stream);

}  // namespace phasor::gta
