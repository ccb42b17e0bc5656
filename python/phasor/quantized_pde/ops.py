"""Fused quantization ops: fake kernels, autograd, and the public wrappers.

Kernels: ``csrc/quantized_pde``; math: :mod:`phasor.quantized_pde.reference` (the test oracle).
Fake quantization runs forward in one pass and backward in one pass (grad_x with the LSQ scale
and zero-point gradients); the int8 convolution is inference-only.
"""
from __future__ import annotations

import math

import torch

__all__ = ["quant_range", "lsq_grad_factor", "fake_quant_per_tensor", "fake_quant_per_channel",
           "fake_quant_complex_per_channel", "quantize_int8", "int8_conv2d", "int8_conv1d"]

ACTIVATIONS = ("none", "relu", "gelu")
OUTPUTS = ("float", "int8")


def quant_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range of a b-bit quantizer (2 <= bits <= 8): signed [-2^(b-1), 2^(b-1)-1] or [0, 2^b-1]."""
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def lsq_grad_factor(numel: int, quant_max: int) -> float:
    """LSQ gradient scale g = 1 / sqrt(N * Q_P) for a scale covering N elements."""
    return 1.0 / math.sqrt(max(numel, 1) * max(quant_max, 1))


# ---------------------------------------------------------------------------- fake kernels
def _check_range(qmin, qmax):
    levels = qmax - qmin + 1
    torch._check(qmin < qmax, lambda: f"quant_min ({qmin}) must be below quant_max ({qmax})")
    torch._check(4 <= levels <= 256 and levels & (levels - 1) == 0,
                 lambda: f"quant_max - quant_min + 1 must be 2^bits with bits in 2..8, got {levels}")
    torch._check(qmin >= -128 and qmax <= 255, lambda: "quant_min/quant_max must lie in [-128, 255]")


def _check_per_tensor(x, scale, zero_point, qmin, qmax):
    torch._check(x.is_floating_point(), lambda: f"x must be a floating-point tensor, got {x.dtype}")
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        torch._check(t.numel() == 1, lambda: f"{name} must have one element, got shape {tuple(t.shape)}")
        torch._check(t.dtype == x.dtype, lambda: f"{name} must have dtype {x.dtype}, got {t.dtype}")
    _check_range(qmin, qmax)


def _check_per_channel(x, scale, axis, qmin, qmax):
    torch._check(x.is_floating_point(), lambda: f"x must be a floating-point tensor, got {x.dtype}")
    torch._check(-x.dim() <= axis < x.dim(), lambda: f"axis {axis} is out of range for x with {x.dim()} dims")
    torch._check(scale.dim() == 1 and scale.shape[0] == x.shape[axis],
                 lambda: f"scale must have x.size(axis) = {x.shape[axis]} entries, got {tuple(scale.shape)}")
    torch._check(scale.dtype == x.dtype, lambda: f"scale must have dtype {x.dtype}, got {scale.dtype}")
    _check_range(qmin, qmax)


@torch.library.register_fake("phasor::fake_quant_per_tensor")
def _fq_tensor_fake(x, scale, zero_point, quant_min, quant_max, grad_factor=1.0):
    _check_per_tensor(x, scale, zero_point, quant_min, quant_max)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("phasor::fake_quant_per_tensor_bwd")
def _fq_tensor_bwd_fake(grad, x, scale, zero_point, quant_min, quant_max, grad_factor):
    _check_per_tensor(x, scale, zero_point, quant_min, quant_max)
    torch._check(grad.shape == x.shape, lambda: "grad must have the shape of x")
    return (torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(scale),
            torch.empty_like(zero_point))


@torch.library.register_fake("phasor::fake_quant_per_channel")
def _fq_channel_fake(x, scale, axis, quant_min, quant_max, grad_factor=1.0):
    _check_per_channel(x, scale, axis, quant_min, quant_max)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("phasor::fake_quant_per_channel_bwd")
def _fq_channel_bwd_fake(grad, x, scale, axis, quant_min, quant_max, grad_factor):
    _check_per_channel(x, scale, axis, quant_min, quant_max)
    torch._check(grad.shape == x.shape, lambda: "grad must have the shape of x")
    return torch.empty_like(x, memory_format=torch.contiguous_format), torch.empty_like(scale)


@torch.library.register_fake("phasor::int8_conv2d")
def _conv_fake(x, x_scale, x_zero_point, weight, w_scale, bias, stride, padding, dilation, activation, output,
               out_scale, out_zero_point):
    torch._check(x.dtype == torch.int8 and weight.dtype == torch.int8, lambda: "x and weight must be int8")
    torch._check(x.dim() == 4 and weight.dim() == 4, lambda: "x must be [N, Ci, H, W], weight [Co, Ci, kh, kw]")
    torch._check(weight.shape[1] == x.shape[1], lambda: "weight's input channels must match x (groups = 1)")
    torch._check(activation in ACTIVATIONS, lambda: f"activation must be one of {ACTIVATIONS}")
    torch._check(output in OUTPUTS, lambda: f"output must be one of {OUTPUTS}")
    ho = (x.shape[2] + 2 * padding[0] - dilation[0] * (weight.shape[2] - 1) - 1) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - dilation[1] * (weight.shape[3] - 1) - 1) // stride[1] + 1
    dtype = torch.int8 if output == "int8" else torch.float32
    return x.new_empty((x.shape[0], weight.shape[0], ho, wo), dtype=dtype)


# ---------------------------------------------------------------------------- autograd
def _fq_tensor_setup(ctx, inputs, output):
    x, scale, zero_point, qmin, qmax, factor = inputs
    ctx.args = (qmin, qmax, factor)
    ctx.save_for_backward(x, scale, zero_point)


def _fq_tensor_backward(ctx, grad):
    x, scale, zero_point = ctx.saved_tensors
    gx, gs, gz = torch.ops.phasor.fake_quant_per_tensor_bwd(grad, x, scale, zero_point, *ctx.args)
    return gx, gs, gz, None, None, None


def _fq_channel_setup(ctx, inputs, output):
    x, scale, axis, qmin, qmax, factor = inputs
    ctx.args = (axis, qmin, qmax, factor)
    ctx.save_for_backward(x, scale)


def _fq_channel_backward(ctx, grad):
    x, scale = ctx.saved_tensors
    gx, gs = torch.ops.phasor.fake_quant_per_channel_bwd(grad, x, scale, *ctx.args)
    return gx, gs, None, None, None, None


torch.library.register_autograd("phasor::fake_quant_per_tensor", _fq_tensor_backward, setup_context=_fq_tensor_setup)
torch.library.register_autograd("phasor::fake_quant_per_channel", _fq_channel_backward,
                                setup_context=_fq_channel_setup)


# ---------------------------------------------------------------------------- public wrappers
def fake_quant_per_tensor(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int = 8,
                          signed: bool = False, grad_factor: float | None = None) -> torch.Tensor:
    """Per-tensor affine fake quantization, one fused pass forward and backward.

    ``x_hat = (clamp(round(x / s) + round(z), qmin, qmax) - round(z)) * s`` with (qmin, qmax) the
    b-bit range (unsigned by default: asymmetric activations). Gradients: straight-through for x,
    LSQ for the scale, LSQ+ for the zero point, both times ``grad_factor`` (default 1/sqrt(N Q_P)).

    Args:
        x: any shape, float32/float64. scale, zero_point: one-element tensors of x's dtype (zero
            point rounded; may be a learnable float). bits: 2..8.
    """
    qmin, qmax = quant_range(bits, signed)
    factor = lsq_grad_factor(x.numel(), qmax) if grad_factor is None else grad_factor
    return torch.ops.phasor.fake_quant_per_tensor(x, scale, zero_point, qmin, qmax, factor)


def fake_quant_per_channel(x: torch.Tensor, scale: torch.Tensor, axis: int = 0, bits: int = 8,
                           grad_factor: float | None = None) -> torch.Tensor:
    """Symmetric signed per-channel fake quantization (weights): ``clamp(round(x / s_c), -2^(b-1),
    2^(b-1) - 1) * s_c`` along ``axis``; straight-through grad for x, LSQ grad for scale [C]."""
    qmin, qmax = quant_range(bits, True)
    per_channel = x.numel() // max(x.shape[axis], 1) if x.dim() else 1
    factor = lsq_grad_factor(per_channel, qmax) if grad_factor is None else grad_factor
    return torch.ops.phasor.fake_quant_per_channel(x, scale, axis, qmin, qmax, factor)


def fake_quant_complex_per_channel(w: torch.Tensor, scale: torch.Tensor, axis: int = 1, bits: int = 8,
                                   grad_factor: float | None = None) -> torch.Tensor:
    """Complex weights (FNO spectral weights): real and imaginary parts quantised separately with
    one scale per channel of ``axis``, i.e. real fake quantization of ``view_as_real(w)``."""
    axis = axis % w.dim()
    return torch.view_as_complex(fake_quant_per_channel(torch.view_as_real(w), scale, axis, bits, grad_factor))


def quantize_int8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Per-tensor affine quantization to int8 storage: clamp(round(x / s) + z, -128, 127)."""
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    if not -128 <= zero_point <= 127:
        raise ValueError(f"zero_point must lie in [-128, 127], got {zero_point}")
    return torch.clamp(torch.round(x * (1.0 / scale)) + zero_point, -128, 127).to(torch.int8)


def _pair(v):
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def int8_conv2d(x: torch.Tensor, x_scale: float, x_zero_point: int, weight: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1, activation: str = "none",
                output: str = "float", out_scale: float = 1.0, out_zero_point: int = 0) -> torch.Tensor:
    """Int8 2-D convolution with int32 accumulation and a fused epilogue (inference only).

    x: int8 ``[N, Ci, H, W]`` quantised per tensor (x_scale, x_zero_point in [-128, 127]);
    weight: int8 ``[Co, Ci, kh, kw]`` symmetric per output channel (w_scale float32 [Co]);
    bias: float32 [Co] (not quantised). Returns ``act(acc * x_scale * w_scale + bias)`` as float32
    (output="float") or requantised to int8 with (out_scale, out_zero_point) (output="int8").
    """
    return torch.ops.phasor.int8_conv2d(x, float(x_scale), int(x_zero_point), weight, w_scale, bias,
                                        _pair(stride), _pair(padding), _pair(dilation), activation, output,
                                        float(out_scale), int(out_zero_point))


def int8_conv1d(x: torch.Tensor, x_scale: float, x_zero_point: int, weight: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None, stride: int = 1, padding: int = 0, dilation: int = 1,
                activation: str = "none", output: str = "float", out_scale: float = 1.0,
                out_zero_point: int = 0) -> torch.Tensor:
    """1-D version of :func:`int8_conv2d`: x ``[N, Ci, L]``, weight ``[Co, Ci, k]`` (a height-1 2-D conv)."""
    if x.dim() != 3 or weight.dim() != 3:
        raise ValueError(f"int8_conv1d: x must be [N, Ci, L] and weight [Co, Ci, k], got {tuple(x.shape)} "
                         f"and {tuple(weight.shape)}")
    y = int8_conv2d(x.unsqueeze(2), x_scale, x_zero_point, weight.unsqueeze(2), w_scale, bias, [1, stride],
                    [0, padding], [1, dilation], activation, output, out_scale, out_zero_point)
    return y.squeeze(2)
