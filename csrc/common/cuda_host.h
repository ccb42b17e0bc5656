// Host-side helpers shared by phasor's CUDA entry points (plain C++: no device code here).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <limits>

namespace phasor::cuda {

// f(T{}) for the storage type T of st (float, double, Half, BFloat16); other dtypes are an error.
template <typename F>
inline void dispatch_dtype(at::ScalarType st, F&& f) {
  switch (st) {
    case at::kFloat: f(float{}); return;
    case at::kDouble: f(double{}); return;
    case at::kHalf: f(c10::Half{}); return;
    case at::kBFloat16: f(c10::BFloat16{}); return;
    default: TORCH_CHECK_TYPE(false, "phasor: unsupported dtype ", st);
  }
}

// The grid size for `blocks` blocks, or an error naming the op when it does not fit one grid.
inline unsigned grid_for(int64_t blocks, const char* op, const char* what) {
  TORCH_CHECK_VALUE(blocks <= static_cast<int64_t>(std::numeric_limits<int32_t>::max()), op, ": too many ",
                    what, " (", blocks, ") for one CUDA grid");
  return static_cast<unsigned>(blocks);
}

}  // namespace phasor::cuda
