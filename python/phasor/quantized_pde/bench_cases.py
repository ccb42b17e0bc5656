"""Benchmark cases of the quantized-PDE ops (registered with phasor.bench).

* fake_quant_per_tensor / fake_quant_per_channel, forward + backward (x, scale [, zero point])
  over an activation-sized tensor: the fused op vs the LSQ reference in eager mode, the
  reference under torch.compile, and torch's learnable fake-quantize ops (the library peer).
* int8_conv2d at U-Net/ResNet layer shapes (batch 8, 64 channels, 128 x 128; 3x3 and 1x1) with
  the ReLU + requantise epilogue (and the 3x3 with GELU, the PDE models' default activation,
  which fbgemm's quantized conv does not fuse): the fused int8 op vs the float32 conv (oneDNN),
  PyTorch's quantized conv (fbgemm, quint8 x qint8 per channel) and the eager
  dequantise-float-requantise reference. Speedups are reported against the float32 conv on CPU. On CUDA the baseline is the
  cuDNN float16 conv (+ the activation) on NCHW tensors, the GPU target's peer; the same conv on
  channels_last tensors (often cuDNN's faster layout), the float32 conv and the op's dp4a
  fallback kernel (PHASOR_QPDE_CUDA_KERNEL=dp4a) are timed too.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..bench.registry import Case, compiled, register
from . import ops, reference


def _grad_runner(fn, leaves, cot):
    return lambda: torch.autograd.grad(fn(), leaves, cot)


def _fq_tensor_case(device, shape):
    torch.manual_seed(0)
    x = (torch.randn(shape, device=device) * 2).requires_grad_()
    qmin, qmax = 0, 255
    scale = torch.tensor([4.0 / 255], device=device, requires_grad=True)
    zp = torch.tensor([120.0], device=device, requires_grad=True)
    factor = ops.lsq_grad_factor(x.numel(), qmax)
    cot = torch.randn(shape, device=device)
    leaves = [x, scale, zp]
    comp = compiled(reference.fake_quant_per_tensor_ref)
    impls = {
        "fused": lambda: torch.ops.phasor.fake_quant_per_tensor(x, scale, zp, qmin, qmax, factor),
        "eager": lambda: reference.fake_quant_per_tensor_ref(x, scale, zp, qmin, qmax, factor),
        "compile": lambda: comp(x, scale, zp, qmin, qmax, factor),
        "torch._fake_quantize_learnable": lambda: torch._fake_quantize_learnable_per_tensor_affine(
            x, scale, zp, qmin, qmax, factor),
    }
    runners = {k: _grad_runner(f, leaves, cot) for k, f in impls.items()}

    def check():
        a = torch.autograd.grad(impls["fused"](), leaves, cot)
        b = torch.autograd.grad(impls["eager"](), leaves, cot)
        # the reference's x gradient is s * (1/s) (one rounding off 1); the scale / zero-point
        # gradients sum ~1e6 terms, compared relative to their magnitude
        return bool(torch.allclose(a[0], b[0], rtol=1e-6, atol=1e-6)
                    and all(torch.allclose(p, q, rtol=1e-3, atol=1e-6) for p, q in zip(a[1:], b[1:])))
    return Case(runners, check, note=f"x {tuple(shape)} float32, 8-bit, forward + backward (x, scale, zero point)")


def _fq_channel_case(device, shape):
    torch.manual_seed(0)
    x = (torch.randn(shape, device=device)).requires_grad_()
    C = shape[0]
    scale = (x.detach().abs().flatten(1).amax(1) / 7).requires_grad_()
    factor = ops.lsq_grad_factor(x.numel() // C, 7)
    cot = torch.randn(shape, device=device)
    leaves = [x, scale]
    zp = torch.zeros(C, device=device)
    comp = compiled(reference.fake_quant_per_channel_ref)
    impls = {
        "fused": lambda: torch.ops.phasor.fake_quant_per_channel(x, scale, 0, -8, 7, factor),
        "eager": lambda: reference.fake_quant_per_channel_ref(x, scale, 0, -8, 7, factor),
        "compile": lambda: comp(x, scale, 0, -8, 7, factor),
        "torch._fake_quantize_learnable": lambda: torch._fake_quantize_learnable_per_channel_affine(
            x, scale, zp, 0, -8, 7, factor),
    }
    runners = {k: _grad_runner(f, leaves, cot) for k, f in impls.items()}

    def check():
        a = torch.autograd.grad(impls["fused"](), leaves, cot)
        b = torch.autograd.grad(impls["eager"](), leaves, cot)
        return bool(torch.allclose(a[0], b[0], rtol=1e-6, atol=1e-6) and torch.allclose(a[1], b[1], rtol=1e-3, atol=1e-6))
    return Case(runners, check, note=f"x {tuple(shape)} float32, 4-bit per channel (axis 0), forward + backward")


def _int8_conv_case(device, N, C, H, k, act="relu"):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(-128, 128, (N, C, H, H), generator=g, dtype=torch.int8).to(device)
    w = torch.randint(-127, 128, (C, C, k, k), generator=g, dtype=torch.int8).to(device)
    ws = (torch.rand(C, generator=g) * 0.002 + 0.001).to(device)
    bias = torch.randn(C, generator=g).to(device)
    xs, zp, os_, oz = 0.02, -3, 0.5, -128
    pad = k // 2
    act_fn = {"relu": torch.relu, "gelu": F.gelu}[act]
    xf = ((x.float() - zp) * xs).contiguous()
    wf = w.float() * ws.view(-1, 1, 1, 1)
    impls = {
        "fused": lambda: ops.int8_conv2d(x, xs, zp, w, ws, bias, 1, pad, 1, act, "int8", os_, oz),
        "eager": lambda: reference.int8_conv2d_ref(x, xs, zp, w, ws, bias, [1, 1], [pad, pad], [1, 1], act, "int8",
                                                   os_, oz),
        "torch.conv2d float32": lambda: act_fn(F.conv2d(xf, wf, bias, 1, pad)),
    }
    baseline = "torch.conv2d float32"
    if device == "cuda":
        xh, wh, bh = xf.half(), wf.half(), bias.half()
        xh_cl, wh_cl = xh.contiguous(memory_format=torch.channels_last), wh.contiguous(memory_format=torch.channels_last)
        # cudnn.benchmark: cuDNN times its algorithms on the first (warm-up) call, the strongest baseline
        impls["torch.conv2d float16 (cuDNN)"] = lambda: _cudnn_benchmark(
            lambda: act_fn(F.conv2d(xh, wh, bh, 1, pad)))
        impls["torch.conv2d float16 channels_last (cuDNN)"] = lambda: _cudnn_benchmark(
            lambda: act_fn(F.conv2d(xh_cl, wh_cl, bh, 1, pad)))
        impls["fused dp4a"] = lambda: _with_env("PHASOR_QPDE_CUDA_KERNEL", "dp4a", impls["fused"])
        baseline = "torch.conv2d float16 (cuDNN)"
    if device == "cpu" and act == "relu" and "fbgemm" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "fbgemm"
        qx = torch._make_per_tensor_quantized_tensor((x.int() + 128).to(torch.uint8), xs, zp + 128)
        qw = torch._make_per_channel_quantized_tensor(w, ws.double(), torch.zeros(C, dtype=torch.int64), 0)
        packed = torch.ops.quantized.conv2d_prepack(qw, bias, [1, 1], [pad, pad], [1, 1], 1)
        impls["torch quantized conv2d_relu (fbgemm)"] = lambda: torch.ops.quantized.conv2d_relu(qx, packed, os_, oz + 128)

    def check():
        a, b = impls["fused"](), impls["eager"]()
        return bool((a.int() - b.int()).abs().max() <= 1)

    runners = {k: (lambda f=f: torch.no_grad()(f)()) for k, f in impls.items()}
    act_name = {"relu": "ReLU", "gelu": "GELU"}[act]
    note = f"N={N} C={C} {H}x{H} k={k}, {act_name} + requantise epilogue; float32 conv on the dequantised tensors"
    if device == "cuda":
        note = (f"N={N} C={C} {H}x{H} k={k}, {act_name} + requantise epilogue; baseline the float16 cuDNN conv "
                f"(+ {act_name})")
    return Case(runners, check, baseline=baseline, note=note)


def _cudnn_benchmark(fn):
    """fn() with torch.backends.cudnn.benchmark on, restored afterwards (no effect on other cases)."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        return fn()
    finally:
        torch.backends.cudnn.benchmark = old


def _with_env(name, value, fn):
    """fn() with os.environ[name] = value (the op reads it per call), then the old value back."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        return fn()
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


register("fake_quant_per_tensor", "x4x64x64x64_fwdbwd")(lambda d: _fq_tensor_case(d, (4, 64, 64, 64)))
register("fake_quant_per_channel", "w256x256x3x3_fwdbwd")(lambda d: _fq_channel_case(d, (256, 256, 3, 3)))
register("int8_conv2d", "unet_N8_C64_128x128_k3")(lambda d: _int8_conv_case(d, 8, 64, 128, 3))
register("int8_conv2d", "fno_N8_C64_128x128_k1")(lambda d: _int8_conv_case(d, 8, 64, 128, 1))
# the PDE models' default activation
register("int8_conv2d", "unet_N8_C64_128x128_k3_gelu")(lambda d: _int8_conv_case(d, 8, 64, 128, 3, "gelu"))
