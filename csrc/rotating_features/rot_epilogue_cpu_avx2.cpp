// AVX2 + FMA build of the CPU epilogue kernels (CMake adds -mavx2 -mfma to every *_avx2.cpp).
#define PHASOR_CPU_ISA avx2
#include "rotating_features/rot_epilogue_cpu_kernels.h"
