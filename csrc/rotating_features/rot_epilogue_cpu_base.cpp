// Baseline (x86-64 SSE2 / any target) build of the CPU epilogue kernels.
#define PHASOR_CPU_ISA base
#include "rotating_features/rot_epilogue_cpu_kernels.h"
