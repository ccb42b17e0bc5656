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


def _layer_case(device, first: bool):
    """A whole RotatingConv2d layer, forward + backward: fused vs the official path."""
    torch.manual_seed(0)
    n, b = 8, 64
    if first:
        fused = RotatingConv2d(1, 32, stride=2, n=n).to(device)
        x = (torch.rand(b, 1, 32, 32, device=device) > 0.6).float()
        inputs_f, inputs_r = [x], [x]
        f_fused = fused.forward_lifted
    else:
        fused = RotatingConv2d(32, 32, n=n).to(device)
        z = torch.randn(b, n, 32, 16, 16, device=device, requires_grad=True)
        mag = torch.linalg.vector_norm(z, dim=1).detach().requires_grad_()
        inputs_f, inputs_r = [z, mag], [z]
        f_fused = fused
    official = RotatingConv2d(fused.conv.in_channels, 32, stride=fused.conv.stride, n=n, fused=False).to(device)
    official.load_state_dict(fused.state_dict())
    f_official = (lambda x: official(reference.lift_input(x, n))) if first else official
    params_f, params_o = list(fused.parameters()), list(official.parameters())

    def make(mod_fn, inputs, params):
        outs = mod_fn(*inputs)
        cots = [torch.randn_like(o) for o in outs]

        def run():
            torch.autograd.grad(mod_fn(*inputs), params, cots)
        return run
    runners = {"fused": make(f_fused, inputs_f, params_f), "eager": make(f_official, inputs_r, params_o),
               "compile": make(compiled(f_official), inputs_r, params_o)}

    def check():
        fused.eval(), official.eval()
        with torch.no_grad():
            ok = outputs_close(f_fused(*inputs_f)[0], f_official(*inputs_r)[0])
        fused.train(), official.train()
        return ok
    note = "first layer: 1 conv (lift) vs n + 1 convs" if first else "chi from the previous layer's magnitude"
    return Case(runners, check, note=note)


register("rotating_layer", "4shapes_first_fwdbwd")(lambda d: _layer_case(d, True))
register("rotating_layer", "4shapes_l2_fwdbwd")(lambda d: _layer_case(d, False))
