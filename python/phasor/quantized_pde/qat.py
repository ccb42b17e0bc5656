"""Quantization-aware training workflow (AIMET-equivalent, spec §3): prepare_qat -> calibrate ->
train -> convert.

* Weights: symmetric signed per output channel, learnable scale (LSQ), fused op
  :func:`~phasor.quantized_pde.ops.fake_quant_per_channel`. Complex FNO spectral weights: real
  and imaginary parts per output channel. Biases are not quantised.
* Activations: the *input* of every conv is quantised asymmetric per tensor with a learnable
  scale and zero point (LSQ/LSQ+), fused op :func:`~phasor.quantized_pde.ops.fake_quant_per_tensor`.
  Quantising conv inputs covers every op output that feeds a conv; a conv + activation pair has
  no quantiser between them (AIMET supergroups). FFTs stay in float.
* ``keep_first_last_8bit``: the first and last conv stay at W8A8 (few channels, most sensitive).
* :func:`convert` turns every quantised conv into :class:`Int8Conv`, which quantises its input to
  int8 storage and runs :func:`~phasor.quantized_pde.ops.int8_conv2d` (int32 accumulation, fused
  epilogue). A conv followed by ReLU or (erf) GELU in an ``nn.Sequential`` takes the activation
  into that epilogue and the activation module becomes ``nn.Identity``. Bit widths below 8 run in
  int8 containers (emulation, values in the b-bit range).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .models import SpectralConv

CONVS = (nn.Conv1d, nn.Conv2d)


class ActQuantizer(nn.Module):
    """Per-tensor asymmetric fake quantizer with learnable (scale, zero_point); min/max observer
    while ``observing`` (calibration)."""

    def __init__(self, bits: int):
        super().__init__()
        ops.quant_range(bits, False)  # validates bits
        self.bits = bits
        self.scale = nn.Parameter(torch.tensor([1.0]))
        self.zero_point = nn.Parameter(torch.tensor([0.0]))
        self.register_buffer("lo", torch.tensor(float("inf")))
        self.register_buffer("hi", torch.tensor(float("-inf")))
        self.observing = False

    def init_from_range(self):
        qmax = (1 << self.bits) - 1
        lo, hi = min(float(self.lo), 0.0), max(float(self.hi), 0.0)  # the range must contain 0
        s = max(hi - lo, 1e-8) / qmax
        with torch.no_grad():
            self.scale.fill_(s)
            self.zero_point.fill_(float(min(max(round(-lo / s), 0), qmax)))

    def forward(self, x):
        if self.observing:
            self.lo = torch.minimum(self.lo, x.detach().min())
            self.hi = torch.maximum(self.hi, x.detach().max())
            return x
        with torch.no_grad():  # keep the learnt parameters valid (the ops reject others)
            self.scale.clamp_(min=1e-8)
            self.zero_point.clamp_(0, (1 << self.bits) - 1)
        return ops.fake_quant_per_tensor(x, self.scale.to(x.dtype), self.zero_point.to(x.dtype), self.bits)


class QuantConv(nn.Module):
    """conv(act_quant(x), weight_quant(w)) + bias for a Conv1d/Conv2d (biases float)."""

    def __init__(self, conv: nn.Module, weight_bits: int, act_bits: int):
        super().__init__()
        ops.quant_range(weight_bits, True)
        self.conv, self.weight_bits = conv, weight_bits
        self.act_quant = ActQuantizer(act_bits)
        self.weight_scale = nn.Parameter(torch.ones(conv.out_channels))

    def init_weight_scale(self):
        qmax = (1 << (self.weight_bits - 1)) - 1
        w = self.conv.weight.detach()
        with torch.no_grad():
            self.weight_scale.copy_(w.abs().flatten(1).amax(1).clamp_min(1e-8) / qmax)

    def quantized_weight(self):
        with torch.no_grad():
            self.weight_scale.clamp_(min=1e-8)
        return ops.fake_quant_per_channel(self.conv.weight, self.weight_scale, 0, self.weight_bits)

    def forward(self, x):
        x = self.act_quant(x)
        return self.conv._conv_forward(x, self.quantized_weight(), self.conv.bias)


def _replace(model: nn.Module, fn):
    for name, child in list(model.named_children()):
        new = fn(child)
        if new is not None:
            setattr(model, name, new)
        else:
            _replace(child, fn)


def quantised_layers(model: nn.Module):
    return [m for m in model.modules() if isinstance(m, (QuantConv, SpectralConv))]


def prepare_qat(model: nn.Module, weight_bits: int, act_bits: int, keep_first_last_8bit: bool = True) -> nn.Module:
    """Insert quantizers in place (returns the model): every Conv1d/Conv2d becomes a QuantConv
    and every SpectralConv gets per-channel weight quantisation. Bits 2..8."""
    ops.quant_range(weight_bits, True)
    ops.quant_range(act_bits, False)
    convs = [m for m in model.modules() if isinstance(m, CONVS)]
    first_last = {id(convs[0]), id(convs[-1])} if convs and keep_first_last_8bit else set()

    def wrap(m):
        if isinstance(m, CONVS):
            wb, ab = (8, 8) if id(m) in first_last else (weight_bits, act_bits)
            return QuantConv(m, wb, ab)
        if isinstance(m, SpectralConv):
            m.weight_bits = weight_bits
            m.weight_scale = nn.Parameter(torch.ones(m.cout))
        return None

    _replace(model, wrap)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, batches) -> nn.Module:
    """Min/max calibration: weight scales from max|w_c|, activation ranges from the batches."""
    quant_acts = [m for m in model.modules() if isinstance(m, ActQuantizer)]
    for m in model.modules():
        if isinstance(m, QuantConv):
            m.init_weight_scale()
        elif isinstance(m, SpectralConv) and m.weight_bits is not None:
            qmax = (1 << (m.weight_bits - 1)) - 1
            w = torch.view_as_real(m.weight).transpose(0, 2).flatten(1)  # [cout, ...]
            m.weight_scale.copy_(w.abs().amax(1).clamp_min(1e-8) / qmax)
    for q in quant_acts:
        q.observing = True
    for x in batches:
        model(x)
    for q in quant_acts:
        q.observing = False
        q.init_from_range()
    return model


class Int8Conv(nn.Module):
    """Inference conv on int8 storage: quantise the input (per tensor), int8 weights (per channel),
    int8_conv2d / int8_conv1d with float bias, the activation of its epilogue ("none", "relu" or
    "gelu"), and float output."""

    def __init__(self, qc: QuantConv, activation: str = "none"):
        super().__init__()
        conv = qc.conv
        self.activation = activation
        self.ndim = conv.weight.dim() - 2
        self.stride, self.dilation = conv.stride, conv.dilation
        self.padding, self.padding_mode = conv.padding, conv.padding_mode
        self.act_bits, self.weight_bits = qc.act_quant.bits, qc.weight_bits
        with torch.no_grad():
            s = qc.weight_scale.detach().float().clamp_min(1e-8)
            lo, hi = ops.quant_range(qc.weight_bits, True)
            wq = torch.clamp(torch.round(conv.weight.float() * (1.0 / s).view(-1, *[1] * (self.ndim + 1))), lo, hi)
        self.register_buffer("weight", wq.to(torch.int8))
        self.register_buffer("w_scale", s)
        self.register_buffer("bias", conv.bias.detach().float() if conv.bias is not None else None)
        self.register_buffer("x_scale", qc.act_quant.scale.detach().float().reshape(()).clamp_min(1e-8))
        qmax = (1 << qc.act_quant.bits) - 1
        self.register_buffer("x_zero_point", qc.act_quant.zero_point.detach().round().clamp(0, qmax).reshape(()))

    def forward(self, x):
        qmax = (1 << self.act_bits) - 1
        xs, zp = float(self.x_scale), int(self.x_zero_point)
        # unsigned b-bit codes stored as int8 (code - 128); zero point shifted alike. In place on one
        # float buffer: the same arithmetic as clamp(round(x / s) + z, 0, qmax) - 128, fewer passes
        q = x.float() * (1.0 / xs)
        q.round_().add_(zp - 128).clamp_(-128, qmax - 128)
        q = q.to(torch.int8)
        pad = list(self.padding)
        if self.padding_mode == "circular" and any(pad):
            q = F.pad(q, [p for p in reversed(pad) for _ in range(2)], mode="circular")  # (int8 as it is)
            pad = [0] * self.ndim
        fn = ops.int8_conv1d if self.ndim == 1 else ops.int8_conv2d
        args = (q, xs, zp - 128, self.weight, self.w_scale, self.bias)
        if self.ndim == 1:
            return fn(*args, stride=self.stride[0], padding=pad[0], dilation=self.dilation[0],
                      activation=self.activation).to(x.dtype)
        return fn(*args, stride=list(self.stride), padding=pad, dilation=list(self.dilation),
                  activation=self.activation).to(x.dtype)

    def extra_repr(self):
        return f"activation={self.activation}" if self.activation != "none" else ""


def _epilogue_activation(m: nn.Module) -> str | None:
    """The int8 epilogue's name for activation module m, or None if the epilogue has no equal."""
    if type(m) is nn.ReLU:
        return "relu"
    if type(m) is nn.GELU and m.approximate == "none":
        return "gelu"
    return None


def _fuse_activations(model: nn.Module):
    """conv, act pairs in every nn.Sequential: the conv's Int8Conv runs act in its epilogue."""
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:  # (listed before editing)
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, act = seq._modules[a], seq._modules[b]
            name = _epilogue_activation(act)
            if isinstance(conv, QuantConv) and name is not None:
                seq._modules[a] = Int8Conv(conv, activation=name)
                seq._modules[b] = nn.Identity()


def convert(model: nn.Module) -> nn.Module:
    """Replace every QuantConv by an Int8Conv (in place; returns the model), with the activation
    that follows it in an nn.Sequential fused into its epilogue. Spectral weights are stored
    dequantised from their quantised values (the FFT path is float)."""
    def swap(m):
        if isinstance(m, QuantConv):
            return Int8Conv(m)
        if isinstance(m, SpectralConv) and m.weight_bits is not None:
            with torch.no_grad():
                m.weight.copy_(m.quantized_weight())
            m.weight_bits = None
        return None

    _fuse_activations(model)
    _replace(model, swap)
    return model
