// AVX2 + FMA build of the CPU GTA kernels (CMake adds -mavx2 -mfma to every *_avx2.cpp).
#define PHASOR_CPU_ISA avx2
#include "gta/gta_cpu_kernels.h"
