// Baseline x86-64 build of the CPU quantized-PDE kernels.
#define PHASOR_CPU_ISA base
#include "quantized_pde/qpde_cpu_kernels.h"
