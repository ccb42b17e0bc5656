// Baseline x86-64 build of the CPU wave-RNN kernels.
#define PHASOR_CPU_ISA base
#include "wave_rnn/wave_rnn_cpu_kernels.h"
