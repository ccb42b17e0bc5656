// AVX-512 build of the CPU quantized-PDE kernels (CMake sets the flags for every *_avx512.cpp);
// the int8 GEMM core also has AVX512-VNNI and AVX-VNNI paths, chosen at run time where the CPU has them.
#define PHASOR_CPU_ISA avx512
#define PHASOR_QPDE_VNNI 1
#define PHASOR_QPDE_VNNI512 1
#include "quantized_pde/qpde_cpu_kernels.h"
