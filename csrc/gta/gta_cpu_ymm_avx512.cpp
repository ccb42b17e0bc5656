// AVX-512 build with 32-byte vectors, which gta_cpu.cpp picks for head dims below 64 and fewer than 512
// keys. Below d = 64 a 64-byte vector spans half the head dim or more, so each broadcast coefficient feeds
// fewer FMAs: the d = 32 forward was 12% slower with them. At N = 256, d = 64 on two threads the forward
// was also 12% slower; at N = 1024 the 64-byte build was 4-8% faster. CMake gives it the AVX-512 flags.
#define PHASOR_CPU_ISA avx512_ymm
#define PHASOR_GTA_VEC_BYTES 32
#include "gta/gta_cpu_kernels.h"
