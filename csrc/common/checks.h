// Argument checks shared by every phasor kernel. Each message names the op and the argument, so a
// user sees "phasor::rot_bn_fwd: chi must ..." rather than a crash or an index error deep inside.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <sstream>
#include <string>
#include <vector>

namespace phasor {

inline std::string sizes_str(c10::IntArrayRef s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

inline void check_floating(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
                   " must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_dtype(const char* op, const char* name, const at::Tensor& t, at::ScalarType want) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, op, ": ", name, " must have dtype ", want, ", got ",
                   t.scalar_type());
}

inline void check_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
                    " but the other inputs are on ", ref.device());
}

inline void check_sizes(const char* op, const char* name, const at::Tensor& t,
                        c10::IntArrayRef want) {
  TORCH_CHECK_VALUE(t.sizes() == want, op, ": ", name, " must have shape ", sizes_str(want),
                    ", got ", sizes_str(t.sizes()));
}

inline void check_dim_at_least(const char* op, const char* name, const at::Tensor& t, int64_t d,
                               const char* layout) {
  TORCH_CHECK_VALUE(t.dim() >= d, op, ": ", name, " must be ", layout, " (at least ", d,
                    " dims), got shape ", sizes_str(t.sizes()));
}

inline void check_dim(const char* op, const char* name, const at::Tensor& t, int64_t d,
                      const char* layout) {
  TORCH_CHECK_VALUE(t.dim() == d, op, ": ", name, " must be ", layout, " (", d,
                    " dims), got shape ", sizes_str(t.sizes()));
}

// Parameters may be float32 while activations are half/bfloat16 (autocast); otherwise they match.
inline at::ScalarType param_dtype_for(at::ScalarType act) {
  return (act == at::kHalf || act == at::kBFloat16) ? at::kFloat : act;
}

}  // namespace phasor
