// Tensor-core (mma.sync m16n8k16) forward of GTA attention for float16/bfloat16 storage
// (gta_cuda_mma.cu). gta_cuda.cu's gta_fwd_cuda calls it after its argument checks; the outputs (O and
// the log-sum-exp) have the SIMT kernel's contract, so the SIMT backward consumes them unchanged.
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
// tests/gta/mma_layout_check.cu checks them on the host against the PTX fragment layouts.
namespace mma_layout {
__host__ __device__ constexpr int q_lane(int lane, int ld) { return ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8; }
__host__ __device__ constexpr int k_lane(int lane, int ld) { return ((lane & 7) + (lane >> 4) * 8) * ld + ((lane >> 3) & 1) * 8; }
__host__ __device__ constexpr int v_lane(int lane, int ld) { return ((lane & 7) + ((lane >> 3) & 1) * 8) * ld + (lane >> 4) * 8; }
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

}  // namespace phasor::gta
