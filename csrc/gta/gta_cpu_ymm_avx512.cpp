// AVX-512 build with 32-byte vectors, which gta_cpu.cpp picks for head dims below 64: there a 64-byte
// vector spans half the head dim or more, so each broadcast coefficient feeds fewer FMAs (measured: the
// d = 32 forward 12% slower with 64-byte vectors, d = 64 3-6% faster). CMake gives it the AVX-512 flags.
#define PHASOR_CPU_ISA avx512_ymm
#define PHASOR_GTA_VEC_BYTES 32
#include "gta/gta_cpu_kernels.h"
