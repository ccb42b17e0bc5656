// AVX2 + FMA build of the CPU cv-RNN kernels (CMake adds -mavx2 -mfma to every *_avx2.cpp).
#define PHASOR_CPU_ISA avx2
#include "complex_rnn/complex_rnn_cpu_kernels.h"
