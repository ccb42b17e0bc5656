// AVX2 + FMA build of the CPU wave-RNN kernels (CMake adds -mavx2 -mfma to every *_avx2.cpp).
#define PHASOR_CPU_ISA avx2
#include "wave_rnn/wave_rnn_cpu_kernels.h"
