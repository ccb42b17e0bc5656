// Baseline x86-64 build of the CPU cv-RNN kernels.
#define PHASOR_CPU_ISA base
#include "complex_rnn/complex_rnn_cpu_kernels.h"
