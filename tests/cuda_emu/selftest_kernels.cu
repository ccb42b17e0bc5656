// Small CUDA kernels that check tools/cuda_emu itself (tests/cuda_emu/test_cuda_emu_runtime.py):
// warp shuffles and block barriers, the NaN fill of fresh shared memory, deadlock detection,
// ldmatrix + mma.sync fragment layouts against a plain matrix product, and cluster shared memory.
// They are ordinary CUDA (they also compile with nvcc) and only ever run under the emulator.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cooperative_groups.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace {

// Per-block sums of x (blockDim 96: three warps), by xor shuffles then shared memory.
__global__ void block_sum_kernel(const float* x, int64_t n, float* out) {
  __shared__ float warp_sums[32];
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  float v = i < n ? x[i] : 0.f;
  for (int m = 16; m > 0; m >>= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int w = 0; w < int(blockDim.x / 32); ++w) s += warp_sums[w];
    out[blockIdx.x] = s;
  }
}

at::Tensor emu_block_sum(const at::Tensor& x) {
  const int64_t n = x.numel(), blocks = (n + 95) / 96;
  auto out = at::empty({blocks}, x.options());
  block_sum_kernel<<<unsigned(blocks), 96, 0, c10::cuda::getCurrentCUDAStream()>>>(x.const_data_ptr<float>(), n,
                                                                                   out.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

// Reads shared memory that no thread wrote (mode 0), or deadlocks: thread 0 waits at the block
// barrier while its warp waits for it in a shuffle (mode 1).
__global__ void misuse_kernel(int mode, float* out) {
  __shared__ float never_written[64];
  if (mode == 1) {
    if (threadIdx.x == 0) __syncthreads();
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
    return;
  }
  out[threadIdx.x] = never_written[threadIdx.x];
}

at::Tensor emu_misuse(const at::Tensor& like, int64_t mode) {
  auto out = at::zeros({32}, like.options());
  misuse_kernel<<<1, 32, 0, c10::cuda::getCurrentCUDAStream()>>>(int(mode), out.mutable_data_ptr<float>());
  return out;
}

// Reverses x within a block through shared memory; `with_barrier` false drops the barrier between
// the writes and the reads (a race that the forward or reverse schedule must expose).
__global__ void reverse_kernel(const float* x, float* out, bool with_barrier) {
  __shared__ float buf[128];
  buf[threadIdx.x] = x[threadIdx.x];
  if (with_barrier) __syncthreads();
  out[threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}

at::Tensor emu_reverse(const at::Tensor& x, bool with_barrier) {
  auto out = at::empty_like(x);
  reverse_kernel<<<1, unsigned(x.numel()), 0, c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<float>(), out.mutable_data_ptr<float>(), with_barrier);
  return out;
}

// Thread 0 reads x[offset] (global memory) or dynamic shared element `offset` of a 64-float buffer:
// out-of-bounds offsets are for the AddressSanitizer build to catch.
__global__ void read_at_kernel(const float* x, int64_t offset, bool shared, float* out) {
  extern __shared__ float dyn[];
  if (shared) {
    dyn[threadIdx.x] = 1.f;
    __syncthreads();
    if (threadIdx.x == 0) out[0] = dyn[offset];
  } else if (threadIdx.x == 0) {
    out[0] = x[offset];
  }
}

at::Tensor emu_read_at(const at::Tensor& x, int64_t offset, bool shared) {
  auto out = at::empty({1}, x.options());
  read_at_kernel<<<1, 64, 64 * sizeof(float), c10::cuda::getCurrentCUDAStream()>>>(
      x.const_data_ptr<float>(), offset, shared, out.mutable_data_ptr<float>());
  return out;
}

// One warp: A (16x16, fp16, row-major) through ldmatrix.x4, B (16x8, given as B^T 8x16 row-major)
// through ldmatrix.x2-as-x4 halves, one mma.sync m16n8k16, C (16x8 float) stored by its layout.
__global__ void mma_kernel(const __half* a, const __half* bt, float* c) {
  __shared__ __align__(16) __half sa[16 * 16];
  __shared__ __align__(16) __half sb[8 * 16 * 2];  // B^T twice: ldmatrix.x4 needs 4 matrices
  const int lane = threadIdx.x;
  for (int i = lane; i < 256; i += 32) sa[i] = a[i];
  for (int i = lane; i < 128; i += 32) sb[i] = sb[i + 128] = bt[i];
  __syncwarp();
  // A: matrices 0..3 = rows 0-7 cols 0-7, rows 8-15 cols 0-7, rows 0-7 cols 8-15, rows 8-15 cols 8-15.
  const int arow = (lane % 8) + 8 * ((lane / 8) % 2), acol = 8 * (lane / 16);
  uint32_t fa[4], fb[4];
  const uint32_t aaddr = uint32_t(__cvta_generic_to_shared(&sa[arow * 16 + acol]));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fa[0]), "=r"(fa[1]), "=r"(fa[2]), "=r"(fa[3])
               : "r"(aaddr));
  // B^T rows n = 0..7: matrix 0 = k 0-7, matrix 1 = k 8-15 (matrices 2, 3 repeat them).
  const int brow = lane % 8, bcol = 8 * ((lane / 8) % 2);
  const uint32_t baddr = uint32_t(__cvta_generic_to_shared(&sb[(lane / 16) * 128 + brow * 16 + bcol]));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(fb[0]), "=r"(fb[1]), "=r"(fb[2]), "=r"(fb[3])
               : "r"(baddr));
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(fa[0]), "r"(fa[1]), "r"(fa[2]), "r"(fa[3]), "r"(fb[0]), "r"(fb[1]));
  const int g = lane / 4, q = lane % 4;
  for (int i = 0; i < 4; ++i) c[(g + 8 * (i / 2)) * 8 + 2 * q + (i % 2)] = acc[i];
}

at::Tensor emu_mma(const at::Tensor& a, const at::Tensor& bt) {
  auto c = at::empty({16, 8}, a.options().dtype(at::kFloat));
  mma_kernel<<<1, 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<const __half*>(a.const_data_ptr<at::Half>()),
      reinterpret_cast<const __half*>(bt.const_data_ptr<at::Half>()), c.mutable_data_ptr<float>());
  return c;
}

// int8: A (16x32) row-major and B^T (8x32) row-major, fragments loaded straight from global
// memory by the PTX ISA's m16n8k32 .s8 layout.
__global__ void mma_s8_kernel(const int8_t* a, const int8_t* bt, int32_t* c) {
  const int lane = threadIdx.x, g = lane / 4, q = lane % 4;
  uint32_t fa[4], fb[2];
  for (int i = 0; i < 4; ++i) fa[i] = *reinterpret_cast<const uint32_t*>(a + (g + 8 * (i % 2)) * 32 + 4 * q + 16 * (i / 2));
  for (int j = 0; j < 2; ++j) fb[j] = *reinterpret_cast<const uint32_t*>(bt + g * 32 + 4 * q + 16 * j);
  int32_t acc[4] = {0, 0, 0, 0};
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
      : "r"(fa[0]), "r"(fa[1]), "r"(fa[2]), "r"(fa[3]), "r"(fb[0]), "r"(fb[1]));
  for (int i = 0; i < 4; ++i) c[(g + 8 * (i / 2)) * 8 + 2 * q + (i % 2)] = acc[i];
}

at::Tensor emu_mma_s8(const at::Tensor& a, const at::Tensor& bt) {
  auto c = at::empty({16, 8}, a.options().dtype(at::kInt));
  mma_s8_kernel<<<1, 32, 0, c10::cuda::getCurrentCUDAStream()>>>(a.const_data_ptr<int8_t>(), bt.const_data_ptr<int8_t>(),
                                                                 c.mutable_data_ptr<int32_t>());
  return c;
}

// Clusters of 4 blocks: each block writes its rank and block index into its shared memory; after
// the cluster barrier every block reads its right neighbour's copy.
__global__ void cluster_ring_kernel(int32_t* out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(16) int32_t slot[];
  auto cluster = cooperative_groups::this_cluster();
  const unsigned rank = cluster.block_rank(), size = cluster.num_blocks();
  if (threadIdx.x == 0) slot[0] = int32_t(blockIdx.x) * 100 + int32_t(rank);
  cluster.sync();
  if (threadIdx.x == 0) out[blockIdx.x] = *cluster.map_shared_rank(slot, (rank + 1) % size);
  cluster.sync();  // a block's shared memory must outlive its neighbours' reads
#else
  __trap();  // clusters need sm_90
#endif
}

at::Tensor emu_cluster_ring(const at::Tensor& like, int64_t blocks) {
  auto out = at::empty({blocks}, like.options().dtype(at::kInt));
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(unsigned(blocks));
  cfg.blockDim = dim3(64);
  cfg.dynamicSmemBytes = 16;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = 4;
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, cluster_ring_kernel, out.mutable_data_ptr<int32_t>()));
  return out;
}

// One warp with known memory costs, for the profile (tools/cuda_emu/runtime/cuda_emu_profile.h):
// a coalesced load (4 sectors), a load with `stride` floats between lanes, a shared store with
// the same stride (banks (stride * lane) % 32), a float4 load (16 sectors, 16-byte accesses),
// a broadcast shared read, and a coalesced store.
__global__ void access_pattern_kernel(const float* x, int stride, float* out) {
  __shared__ float tile[32 * 33];
  const int t = threadIdx.x;
  const float a = x[t];
  const float b = x[t * stride];
  tile[(t * stride) % (32 * 33)] = a + b;
  const float4 v = reinterpret_cast<const float4*>(x)[t];
  __syncthreads();
  out[t] = tile[(t * stride) % (32 * 33)] + tile[0] + v.x + v.w;
}

// A store inside a loop that lane t executes in iterations i > t / 8 only: the profile must flag
// the site as divergent (lanes execute it unequal numbers of times).
__global__ void divergent_store_kernel(float* out) {
  const int t = threadIdx.x;
  for (int i = 0; i < 4; ++i)
    if (t < 8 * i) out[32 * i + t] = 1.f;
}

at::Tensor emu_divergent_store(const at::Tensor& like) {
  auto out = at::zeros({128}, like.options());
  divergent_store_kernel<<<1, 32, 0, c10::cuda::getCurrentCUDAStream()>>>(out.mutable_data_ptr<float>());
  return out;
}

at::Tensor emu_access_pattern(const at::Tensor& x, int64_t stride) {
  TORCH_CHECK(x.numel() >= 32 * std::max<int64_t>(stride, 4), "emu_access_pattern: x is too short for the stride");
  auto out = at::empty({32}, x.options());
  access_pattern_kernel<<<1, 32, 0, c10::cuda::getCurrentCUDAStream()>>>(x.const_data_ptr<float>(), int(stride),
                                                                         out.mutable_data_ptr<float>());
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(phasor, m) {
  m.def("emu_block_sum(Tensor x) -> Tensor");
  m.def("emu_misuse(Tensor like, int mode) -> Tensor");
  m.def("emu_reverse(Tensor x, bool with_barrier) -> Tensor");
  m.def("emu_read_at(Tensor x, int offset, bool shared) -> Tensor");
  m.def("emu_mma(Tensor a, Tensor bt) -> Tensor");
  m.def("emu_mma_s8(Tensor a, Tensor bt) -> Tensor");
  m.def("emu_cluster_ring(Tensor like, int blocks) -> Tensor");
  m.def("emu_access_pattern(Tensor x, int stride) -> Tensor");
  m.def("emu_divergent_store(Tensor like) -> Tensor");
}

TORCH_LIBRARY_IMPL(phasor, CUDA, m) {
  m.impl("emu_block_sum", &emu_block_sum);
  m.impl("emu_mma", &emu_mma);
  m.impl("emu_mma_s8", &emu_mma_s8);
  m.impl("emu_misuse", &emu_misuse);
  m.impl("emu_reverse", &emu_reverse);
  m.impl("emu_read_at", &emu_read_at);
  m.impl("emu_cluster_ring", &emu_cluster_ring);
  m.impl("emu_access_pattern", &emu_access_pattern);
  m.impl("emu_divergent_store", &emu_divergent_store);
}
