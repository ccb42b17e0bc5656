// Baseline x86-64 build of the CPU GTA kernels.
#define PHASOR_CPU_ISA base
#include "gta/gta_cpu_kernels.h"
