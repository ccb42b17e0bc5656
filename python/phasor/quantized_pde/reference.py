"""Plain-PyTorch references of the quantized-PDE ops (test oracles and benchmark baselines).

Fake quantization follows LSQ (Esser et al. 2020) with the LSQ+ zero point: rounding has a
straight-through gradient, so autograd of these expressions *is* the paper's gradient:
d x_hat / d s = round(x/s) - x/s inside the range, qmin - z below and qmax - z above; the scale
(and zero point) gradient is multiplied by grad_factor = 1 / sqrt(N * qmax) through the usual
``s + (s g - (s g).detach())`` trick (forward value exactly s). The products use ``x * (1 / s)`` as torch's own
fake_quantize kernels do, so results agree with them bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _round_ste(t: torch.Tensor) -> torch.Tensor:
    return t + (torch.round(t) - t).detach()


def _grad_scaled(t: torch.Tensor, factor: float) -> torch.Tensor:
    # forward value exactly t (so the rounding matches the kernels bit for bit), gradient * factor
    scaled = t * factor
    return t.detach() + (scaled - scaled.detach())


def fake_quant_per_tensor_ref(x, scale, zero_point, quant_min: int, quant_max: int, grad_factor: float = 1.0):
    """(clamp(round(x / s) + round(z), qmin, qmax) - round(z)) * s with LSQ/LSQ+ gradients."""
    s = _grad_scaled(scale.reshape(()), grad_factor)
    z = _round_ste(_grad_scaled(zero_point.reshape(()), grad_factor))
    q = torch.clamp(_round_ste(x * (1.0 / s)) + z, quant_min, quant_max)
    return (q - z) * s


def fake_quant_per_channel_ref(x, scale, axis: int, quant_min: int, quant_max: int, grad_factor: float = 1.0):
    """Symmetric per-channel fake quantization (zero point 0) along `axis`, LSQ scale gradient."""
    shape = [1] * x.dim()
    shape[axis] = -1
    s = _grad_scaled(scale, grad_factor).reshape(shape)
    q = torch.clamp(_round_ste(x * (1.0 / s)), quant_min, quant_max)
    return q * s


def quantize_int8_ref(x, scale: float, zero_point: int) -> torch.Tensor:
    """Per-tensor affine quantization of a float tensor to int8 storage."""
    return torch.clamp(torch.round(x / scale) + zero_point, -128, 127).to(torch.int8)


def int8_conv2d_accumulator_ref(x, x_zero_point, weight, stride, padding, dilation) -> torch.Tensor:
    """The exact int32 accumulator sum (x - z_x) * w, as int64 (computed in float64, exact here)."""
    xd = x.double() - x_zero_point  # zero padding of (x - z_x) is the quantised zero
    acc = F.conv2d(xd, weight.double(), None, stride, padding, dilation)
    return acc.round().to(torch.int64)


def _act(y, activation: str):
    return {"none": lambda t: t, "relu": torch.relu, "gelu": F.gelu}[activation](y)


def int8_conv2d_ref(x, x_scale, x_zero_point, weight, w_scale, bias, stride, padding, dilation,
                    activation="none", output="float", out_scale=1.0, out_zero_point=0):
    """Dequantised-float semantics of the int8 conv: acc * s_x * s_w[co] + bias, act, output."""
    acc = int8_conv2d_accumulator_ref(x, x_zero_point, weight, stride, padding, dilation).float()
    mult = (torch.tensor(x_scale, dtype=torch.float32) * w_scale.float()).view(1, -1, 1, 1)
    y = acc * mult
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    y = _act(y, activation)
    if output == "float":
        return y
    return torch.clamp(torch.round(y * (1.0 / out_scale)) + out_zero_point, -128, 127).to(torch.int8)
