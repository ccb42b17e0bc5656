// AVX2 + FMA build of the CPU quantized-PDE kernels (CMake adds -mavx2 -mfma to every *_avx2.cpp);
// the int8 GEMM core also has an AVX-VNNI path, chosen at run time where the CPU has it.
#define PHASOR_CPU_ISA avx2
#define PHASOR_QPDE_VNNI 1
#include "quantized_pde/qpde_cpu_kernels.h"
