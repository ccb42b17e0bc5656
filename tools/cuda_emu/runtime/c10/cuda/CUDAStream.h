// cuda_emu shadow of c10/cuda/CUDAStream.h: one emulated stream, every launch synchronous.
#pragma once
#include <cuda_runtime.h>
namespace c10::cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
  operator cudaStream_t() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream(int = -1) { return {}; }
}  // namespace c10::cuda
