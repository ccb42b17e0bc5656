"""Benchmark cases of the Rotating Features ops (registered with phasor.bench).

Epilogue cases time the fused op against the official-code reference (eager and torch.compile) on the
magnitude/orientation tensors of a layer; layer cases time a whole rotating layer, convolutions
included, against the official path (n + 1 convs on the first layer, norm recomputed per layer).
"""
from __future__ import annotations

import torch

from ..bench.registry import Case, compiled, outputs_close, register
from . import ops, reference
from .nn import RotatingConv2d


def _grad_runner(fn, inputs, leaves, seed=0):
    """Zero-arg callable: forward, then backward of every output under fixed random cotangents."""
    outs = fn(*inputs)
    g = torch.Generator().manual_seed(seed)
    cots = [torch.randn(o.shape, generator=g).to(o) for o in outs]

    def run():
        torch.autograd.grad(fn(*inputs), leaves, cots)
    return run


def _epilogue_case(device, shape, backward, ln=False):
    torch.manual_seed(0)
    b, n, c, *sp = shape
    kw = dict(device=device, dtype=torch.float32)
    psi = torch.randn(b, n, c, *sp, **kw)
    chi = torch.rand(b, c, *sp, **kw) * 2
    rb = torch.randn(n, c, **kw) * 0.3
    w, bb = torch.ones(c, **kw), torch.zeros(c, **kw)
    if ln:
        fused, ref = ops.rot_ln_epilogue, reference.rot_ln_epilogue_ref
        args = [psi, chi, rb, w, bb]
    else:
        rm, rv = torch.zeros(c, **kw), torch.ones(c, **kw)
        fused = lambda *a: ops.rot_bn_epilogue(*a, rm, rv, True)  # noqa: E731
        ref = lambda *a: reference.rot_bn_epilogue_ref(*a, rm, rv, True)  # noqa: E731
        args = [psi, chi, rb, w, bb]
    comp = compiled(ref)
    impls = {"fused": fused, "eager": ref, "compile": comp}
    if backward:
        leaves = [a.requires_grad_() for a in args]
        runners = {k: _grad_runner(f, args, leaves) for k, f in impls.items()}
    else:
        runners = {k: (lambda f=f: f(*args)) for k, f in impls.items()}

    def check():
        with torch.no_grad():
            same_fwd = outputs_close(fused(*args), ref(*args))
        if not backward:
            return same_fwd
        cots = [torch.randn_like(o) for o in ref(*args)]
        g1 = torch.autograd.grad(fused(*args), leaves, cots)
        g2 = torch.autograd.grad(ref(*args), leaves, cots)
        return same_fwd and outputs_close(g1, g2, rtol=1e-3, atol=1e-3)
    return Case(runners, check)


# 4Shapes layer 2 (RotConv h -> h at 16x16, batch 64, n = 8) and a larger one (batch 32, 64 channels, 32x32).
SHAPES = {"4shapes_16x16": (64, 8, 32, 16, 16), "large_64ch_32x32": (32, 8, 64, 32, 32)}
for _name, _shape in SHAPES.items():
    register("rot_bn_epilogue", f"{_name}_fwd")(lambda d, s=_shape: _epilogue_case(d, s, False))
    register("rot_bn_epilogue", f"{_name}_fwdbwd")(lambda d, s=_shape: _epilogue_case(d, s, True))
# The decoder's rotating linear (64 -> 2h * 4 * 4 = 1024 features), batch 64.
register("rot_ln_epilogue", "4shapes_linear_fwdbwd")(lambda d: _epilogue_case(d, (64, 8, 1024), True, ln=True))


def _layer_case(device, first: bool, backward: bool = True, b: int = 64, ch: int = 32, size: int = 16):
    """A whole RotatingConv2d layer (convolutions included): fused vs the official path."""
    torch.manual_seed(0)
    n = 8
    if first:
        fused = RotatingConv2d(1, ch, stride=2, n=n).to(device)
        x = (torch.rand(b, 1, 2 * size, 2 * size, device=device) > 0.6).float()
        inputs_f, inputs_r = [x], [x]
        f_fused = fused.forward_lifted
    else:
        fused = RotatingConv2d(ch, ch, n=n).to(device)
        z = torch.randn(b, n, ch, size, size, device=device, requires_grad=True)
        mag = torch.linalg.vector_norm(z, dim=1).detach().requires_grad_()
        inputs_f, inputs_r = [z, mag], [z]
        f_fused = fused
    official = RotatingConv2d(fused.conv.in_channels, ch, stride=fused.conv.stride, n=n, fused=False).to(device)
    official.load_state_dict(fused.state_dict())
    f_official = (lambda x: official(reference.lift_input(x, n))) if first else official
    params_f, params_o = list(fused.parameters()), list(official.parameters())

    def make(mod_fn, inputs, params):
        if not backward:
            def run_fwd():
                with torch.no_grad():
                    mod_fn(*inputs)
            return run_fwd
        outs = mod_fn(*inputs)
        cots = [torch.randn_like(o) for o in outs]

        def run():
            torch.autograd.grad(mod_fn(*inputs), params, cots)
        return run
    runners = {"fused": make(f_fused, inputs_f, params_f), "eager": make(f_official, inputs_r, params_o),
               "compile": make(compiled(f_official), inputs_r, params_o)}

    def check():
        # the runners' warm-up forwards updated each twin's BatchNorm statistics a different number
        # of times: compare from one shared state
        official.load_state_dict(fused.state_dict())
        fused.eval(), official.eval()
        with torch.no_grad():
            ok = outputs_close(f_fused(*inputs_f)[0], f_official(*inputs_r)[0])
        fused.train(), official.train()
        return ok
    note = "first layer: 1 conv (lift) vs n + 1 convs" if first else "chi from the previous layer's magnitude"
    return Case(runners, check, note=note)


register("rotating_layer", "4shapes_first_fwd")(lambda d: _layer_case(d, True, backward=False))
register("rotating_layer", "4shapes_first_fwdbwd")(lambda d: _layer_case(d, True))
register("rotating_layer", "4shapes_l2_fwd")(lambda d: _layer_case(d, False, backward=False))
register("rotating_layer", "4shapes_l2_fwdbwd")(lambda d: _layer_case(d, False))
# larger: 64 channels at 32x32, batch 32 (the first layer: a 64x64 image to 64 channels)
register("rotating_layer", "large_first_fwdbwd")(lambda d: _layer_case(d, True, b=32, ch=64, size=32))
register("rotating_layer", "large_64ch_32x32_fwd")(lambda d: _layer_case(d, False, backward=False, b=32, ch=64, size=32))
register("rotating_layer", "large_64ch_32x32_fwdbwd")(lambda d: _layer_case(d, False, b=32, ch=64, size=32))
