"""Cost accounting (spec §6): MACs and bit-operations per forward pass and sample.

* conv: MAC = prod(out spatial) * C_out * C_in * prod(kernel) / groups.
* Fourier mixing: 4 real MACs per complex MAC: 4 * corners * prod(modes) * C_in * C_out.
* FFTs: 2.5 N log2 N real flops per channel and transform (rfft of the C_in inputs, irfft of
  the C_out outputs), always at float cost.
* BOPs = sum MAC * b_w * b_a (float layers at 32 x 32); FP32-equivalent FLOPs =
  sum 2 MAC b_w b_a / 32^2 + FFT flops. Quantised convs read their bits from the layer; a
  quantised spectral layer has b_w bits and float (32-bit) Fourier inputs.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .models import SpectralConv
from .qat import CONVS, Int8Conv, QuantConv


def _conv_macs(weight_shape, out_shape, groups=1) -> int:
    cout, cin_g = weight_shape[0], weight_shape[1]
    return math.prod(out_shape[2:]) * cout * cin_g * math.prod(weight_shape[2:])


@torch.no_grad()
def count_cost(model: nn.Module, example: torch.Tensor, spectral_act_bits: int | None = 32) -> dict:
    """Per-sample MACs, BOPs, FFT flops and FP32-equivalent FLOPs of one forward pass on `example`.

    spectral_act_bits: bits of the Fourier coefficients entering a spectral mixing (32: float, as
    phasor's FNO runs; None: as many as the layer's weights, the spec's integer-pipeline count)."""
    rows = []

    def hook(mod, inp, out):
        if isinstance(mod, QuantConv):
            w = mod.conv.weight
            rows.append(dict(kind="conv", macs=_conv_macs(w.shape, out.shape, mod.conv.groups),
                             bw=mod.weight_bits, ba=mod.act_quant.bits, fft=0.0))
        elif isinstance(mod, Int8Conv):
            rows.append(dict(kind="conv", macs=_conv_macs(mod.weight.shape, out.shape), bw=mod.weight_bits, ba=mod.act_bits, fft=0.0))
        elif isinstance(mod, CONVS):
            rows.append(dict(kind="conv", macs=_conv_macs(mod.weight.shape, out.shape, mod.groups), bw=32, ba=32,
                             fft=0.0))
        elif isinstance(mod, SpectralConv):
            grid = math.prod(inp[0].shape[2:])
            corners = 1 if mod.ndim == 1 else 2
            macs = 4 * corners * mod.modes ** mod.ndim * mod.cin * mod.cout
            fft = 2.5 * grid * math.log2(grid) * (mod.cin + mod.cout)
            bw = mod.weight_bits or 32
            ba = bw if spectral_act_bits is None else spectral_act_bits
            rows.append(dict(kind="spectral", macs=macs, bw=bw, ba=ba, fft=fft))

    inner = [m for m in model.modules() if isinstance(m, (QuantConv, Int8Conv, SpectralConv))]
    skip = {id(m.conv) for m in inner if isinstance(m, QuantConv)}
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (QuantConv, Int8Conv, SpectralConv)) or (isinstance(m, CONVS) and id(m) not in skip)]
    try:
        model(example[:1])
    finally:
        for h in handles:
            h.remove()
    macs = sum(r["macs"] for r in rows)
    bops = sum(r["macs"] * r["bw"] * r["ba"] for r in rows)
    fft = sum(r["fft"] for r in rows)
    return dict(macs=macs, bops=bops, fft_flops=fft, fp32_equiv_flops=2 * bops / 1024 + fft, layers=rows)
