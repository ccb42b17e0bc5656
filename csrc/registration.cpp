// The phasor op library. Each system declares its op schemas in its own
// csrc/<system>/<system>_schema.cpp (a TORCH_LIBRARY_FRAGMENT naming the Python module that holds
// the ops' fake kernels and autograd, so torch can tell a user which module to import); kernels
// are registered per device next to them.
#include <torch/library.h>

TORCH_LIBRARY(phasor, m) {}
