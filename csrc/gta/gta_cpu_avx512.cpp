// AVX-512 build (F/BW/VL/DQ, 512-bit vectors) of the kernels below; CMake sets the flags for every *_avx512.cpp.
#define PHASOR_CPU_ISA avx512
#include "gta/gta_cpu_kernels.h"
