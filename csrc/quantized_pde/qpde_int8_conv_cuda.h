// The tensor-core (mma.sync s8) implicit-GEMM path of phasor::int8_conv2d on CUDA
// (qpde_int8_conv_cuda.cu) and its direct 1x1 kernel; qpde_cuda.cu registers the op and picks a path.
#pragma once
#include "quantized_pde/qpde_checks.h"

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace phasor::qpde {

struct Int8ConvEpilogue {
  float x_scale;    // float(x_scale), as the CPU kernel rounds it
  int32_t x_zp;     // input zero point (also the padding value)
  float inv_out;    // float(1 / out_scale)
  int32_t out_zp;
  Act act;
  bool int8_out;
};

// Whether the mma path takes this geometry on `device` (sm_80+ and every index in int32 range).
bool int8_conv_mma_supported(const ConvGeom& g, int device);

// x [N, Ci, H, W] int8, w [Co, Ci, kh, kw] int8, w_scale [Co] float, bias [Co] float or undefined,
// all contiguous on the current device; out [N, Co, Ho, Wo] int8 or float, preallocated.
void int8_conv_mma_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, const at::Tensor& bias,
                        const ConvGeom& g, const Int8ConvEpilogue& e, at::Tensor& out);

// The direct path for 1x1, stride-1, unpadded convs (any dilation): reads the NCHW input as it is
// (no NHWC prep pass); input channels up to 256. Same arguments and epilogue as the mma path.
bool int8_conv_1x1_supported(const ConvGeom& g, int device);
void int8_conv_1x1_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, const at::Tensor& bias,
                        const ConvGeom& g, const Int8ConvEpilogue& e, at::Tensor& out);

// The direct path for 3x3, stride-1, padding-1, undilated convs (any channel counts): reads the
// NCHW input as it is; only the weights are repacked (a small per-call kernel). Same arguments and
// epilogue as the mma path.
bool int8_conv_3x3_supported(const ConvGeom& g, int device);
void int8_conv_3x3_cuda(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale, const at::Tensor& bias,
                        const ConvGeom& g, const Int8ConvEpilogue& e, at::Tensor& out);

}  // namespace phasor::qpde
