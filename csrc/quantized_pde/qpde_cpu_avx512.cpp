// AVX-512 build of the CPU quantized-PDE kernels (CMake sets the flags for every *_avx512.cpp);
// the int8 GEMM core also has an AVX-VNNI path, chosen at run time where the CPU has it.
#define PHASOR_CPU_ISA avx512
#define PHASOR_QPDE_VNNI 1
#include "quantized_pde/qpde_cpu_kernels.h"
