// Schemas of the quantized-PDE ops (kernels: qpde_cpu.cpp, qpde_cuda.cu; math: reference.py).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(phasor, m) {
  m.set_python_module("phasor.quantized_pde.ops");
  // ---- fake quantization (quantize -> dequantize in one pass) ------------------------------
  // Per-tensor affine: y = (clamp(round(x / s) + z, qmin, qmax) - z) * s, with scale s and zero
  // point z one-element tensors of x's dtype (z is rounded, so it may be a learnable float).
  // grad_factor (the LSQ gradient scale) is not used by the forward; autograd passes it on.
  m.def("fake_quant_per_tensor(Tensor x, Tensor scale, Tensor zero_point, int quant_min, int quant_max, "
        "float grad_factor=1.0) -> Tensor");
  // Its backward in one pass: straight-through grad_x, the LSQ scale gradient and the zero-point
  // gradient, both summed over all elements in a fixed order and multiplied by grad_factor.
  m.def("fake_quant_per_tensor_bwd(Tensor grad, Tensor x, Tensor scale, Tensor zero_point, int quant_min, "
        "int quant_max, float grad_factor) -> (Tensor grad_x, Tensor grad_scale, Tensor grad_zero_point)");
  // Per-channel symmetric (zero point 0): scale [C] along x's dimension `axis`.
  m.def("fake_quant_per_channel(Tensor x, Tensor scale, int axis, int quant_min, int quant_max, "
        "float grad_factor=1.0) -> Tensor");
  m.def("fake_quant_per_channel_bwd(Tensor grad, Tensor x, Tensor scale, int axis, int quant_min, "
        "int quant_max, float grad_factor) -> (Tensor grad_x, Tensor grad_scale)");
  // ---- int8 convolution for inference ------------------------------------------------------
  // x int8 [N, Ci, H, W] (per-tensor x_scale, x_zero_point), weight int8 [Co, Ci, kh, kw]
  // (symmetric, per-output-channel w_scale float32 [Co]), bias float32 [Co] or None; int32
  // accumulation of (x - x_zero_point) * w, then the epilogue: acc * x_scale * w_scale[co] + bias,
  // activation none | relu | gelu, and output "float" (float32) or "int8" (requantised with
  // out_scale, out_zero_point). groups = 1.
  m.def("int8_conv2d(Tensor x, float x_scale, int x_zero_point, Tensor weight, Tensor w_scale, Tensor? bias, "
        "int[2] stride, int[2] padding, int[2] dilation, str activation, str output, float out_scale, "
        "int out_zero_point) -> Tensor");
}
