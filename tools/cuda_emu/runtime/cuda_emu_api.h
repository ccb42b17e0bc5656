// cuda_emu: the CUDA runtime calls phasor's host code makes, answered for an emulated H100
// (translate.py renames each `cudaX(` in phasor's sources to `::cuda_emu::api::cudaX(`).
#pragma once

namespace cuda_emu::api {

constexpr int kSMs = 132;
constexpr int kSmemOptin = 232448;  // 227 KB per block
constexpr int kSmemPerSM = 233472;

// A tensor's device index as the host code sees it: the CPU tensors of an emulated op are device 0.
inline int emu_device(int64_t d) { return d < 0 ? 0 : int(d); }

inline cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "cuda_emu error"; }

inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int) {
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = kSMs; break;
    case cudaDevAttrComputeCapabilityMajor: *v = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *v = 0; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = kSmemOptin; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = 49152; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *v = kSmemPerSM; break;
    case cudaDevAttrMaxThreadsPerBlock: *v = 1024; break;
    case cudaDevAttrWarpSize: *v = 32; break;
    default: fail("cudaDeviceGetAttribute: attribute " + std::to_string(int(attr)) + " not emulated");
  }
  return cudaSuccess;
}

template <typename K>
cudaError_t cudaFuncSetAttribute(K* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value > kSmemOptin) fail("cudaFuncSetAttribute: more dynamic shared memory than the device has");
    std::lock_guard<std::mutex> lk(attr_mu());
    max_dynamic_smem()[reinterpret_cast<const void*>(kernel)] = value;
  }
  return cudaSuccess;
}
template <typename K>
cudaError_t cudaFuncGetAttributes(cudaFuncAttributes* a, K*) {
  *a = cudaFuncAttributes{};
  a->maxThreadsPerBlock = 1024;
  a->numRegs = 64;
  a->sharedSizeBytes = 0;
  a->maxDynamicSharedSizeBytes = 49152;
  a->ptxVersion = a->binaryVersion = 90;
  return cudaSuccess;
}

inline int blocks_per_sm(int threads, size_t smem) {
  int n = std::min(32, 2048 / std::max(threads, 1));
  if (smem > 0) n = std::min<int>(n, int(kSmemPerSM / (smem + 1024)));
  return n;
}
template <typename K>
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, K*, int threads, size_t smem) {
  *n = blocks_per_sm(threads, smem);
  return cudaSuccess;
}

inline int cluster_of(const cudaLaunchConfig_t* cfg) {
  for (unsigned i = 0; i < cfg->numAttrs; ++i)
    if (cfg->attrs[i].id == cudaLaunchAttributeClusterDimension) {
      const auto& d = cfg->attrs[i].val.clusterDim;
      if (d.y != 1 || d.z != 1) fail("cluster dimensions other than (C, 1, 1) are not emulated");
      return int(d.x);
    }
  return 1;
}
template <typename K>
cudaError_t cudaOccupancyMaxActiveClusters(int* n, K*, const cudaLaunchConfig_t* cfg) {
  const int C = cluster_of(cfg);
  if (C > 8) return cudaErrorInvalidValue;  // beyond the portable size, as without the opt-in
  const int t = int(cfg->blockDim.x * cfg->blockDim.y * cfg->blockDim.z);
  *n = blocks_per_sm(t, cfg->dynamicSmemBytes) * kSMs / C;
  return cudaSuccess;
}

template <typename... P, typename... A>
cudaError_t cudaLaunchKernelEx(const cudaLaunchConfig_t* cfg, void (*kernel)(P...), A&&... args) {
  check_smem(reinterpret_cast<const void*>(kernel), cfg->dynamicSmemBytes);
  LaunchConfig lc{cfg->gridDim, cfg->blockDim, cfg->dynamicSmemBytes, cluster_of(cfg), reinterpret_cast<const void*>(kernel)};
  launch(lc, [&] { kernel(args...); });
  return cudaSuccess;
}

inline cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t = nullptr) {
  std::memset(p, v, n);
  return cudaSuccess;
}

}  // namespace cuda_emu::api

// The cluster part of cooperative_groups that phasor uses.
namespace cooperative_groups {
struct cluster_group {
  void sync() const {
    ::cuda_emu::Block& b = *::cuda_emu::ctx().block;
    b.cluster->bar.arrive_and_wait();
  }
  unsigned block_rank() const { return unsigned(::cuda_emu::ctx().block->rank); }
  unsigned num_blocks() const { return unsigned(::cuda_emu::ctx().block->cluster->blocks.size()); }
  // The address in block `rank`'s shared memory that corresponds to `p` in this block's.
  template <typename T>
  T* map_shared_rank(T* p, unsigned rank) const {
    ::cuda_emu::Block& b = *::cuda_emu::ctx().block;
    const auto& blocks = b.cluster->blocks;
    if (rank >= blocks.size()) ::cuda_emu::fail("map_shared_rank: rank outside the cluster");
    const auto off = reinterpret_cast<unsigned char*>(const_cast<std::remove_cv_t<T>*>(p)) - b.arena;
    if (off < 0 || size_t(off) >= ::cuda_emu::kArenaBytes) ::cuda_emu::fail("map_shared_rank of a non-shared pointer");
    return reinterpret_cast<T*>(blocks[rank]->arena + off);
  }
};
inline cluster_group this_cluster() { return {}; }
}  // namespace cooperative_groups
