// cuda_emu shadow of c10/cuda/CUDAException.h.
#pragma once
#include <c10/util/Exception.h>
#define C10_CUDA_CHECK(expr)                                                     \
  do {                                                                           \
    const cudaError_t phasor_emu_err = (expr);                                   \
    TORCH_CHECK(phasor_emu_err == cudaSuccess, "cuda_emu: ", #expr, " failed");  \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() ((void)0)
