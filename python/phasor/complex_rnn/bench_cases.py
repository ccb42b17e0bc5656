"""Benchmark cases of the cv-RNN S-step run (registered with phasor.bench).

The issue's sizes: images 32 x 32 and 64 x 64, batch 16, S = 200 updates, complex64, keeping the
last sample. Two couplings: "local" (the paper's layer 2: alpha 0.5, sigma 0.0313 on the masked
sheet; its 140-update run is the pipeline's hot path) and "global" (layer 1: sigma 0.9, near-uniform
coupling, no mask). Impls: the fused op; the eager separable reference (two complex matmuls per step,
the baseline); the eager dense reference (one complex [n, n] matmul per step; 32 x 32 only: at
64 x 64 a run is ~430 GFLOP); the separable step + renormalisation compiled by torch.compile.
"""
from __future__ import annotations

import math

import torch

from ..bench.registry import Case, compiled, register
from . import ops, reference

S, B = 200, 16
COUPLINGS = {"local": (0.5, 0.0313, True), "global": (0.5, 0.9, False)}


def _inputs(device, N, masked, dtype=torch.complex64):
    g = torch.Generator().manual_seed(0)
    x0 = torch.polar(torch.ones(B, N, N, dtype=torch.float64),
                     2 * math.pi * torch.rand(B, N, N, generator=g, dtype=torch.float64))
    omega = torch.where(torch.rand(B, N, N, generator=g) > 0.8, 1.0, -1.0).double()
    mask = (torch.rand(B, N, N, generator=g) > 0.3).to(device) if masked else None
    return x0.to(device, dtype), omega.to(device, dtype.to_real()), mask


def _loop(step):
    def run(x0):
        x = x0
        for _ in range(S):
            x = step(x)
        return x
    return run


def _case(device, N, coupling):
    alpha, sigma, masked = COUPLINGS[coupling]
    x0, omega, mask = _inputs(device, N, masked)
    rdt = omega.dtype
    G = reference.gaussian_axis(N, sigma, rdt, device)

    def sep_step(x):
        return reference.renormalise(reference.step_separable(x, omega, alpha, G, G, mask))

    impls = {
        "fused": lambda: ops.cvrnn_run(x0, omega, alpha, sigma, S, mask=mask, save_start=S),
        "eager": lambda: _loop(sep_step)(x0),
        "compile": (lambda f: lambda: f(x0))(_loop(compiled(sep_step))),
    }
    if N <= 32:
        K = reference.gaussian_sheet(N, N, alpha, sigma, rdt, device).to(x0.dtype)  # complex once, not per step
        flat_om = omega.reshape(B, -1)
        flat_m = None if mask is None else mask.reshape(B, -1)
        dense_step = lambda x: reference.renormalise(reference.step_dense(x, flat_om, K, flat_m))  # noqa: E731
        impls["eager_dense"] = lambda: _loop(dense_step)(x0.reshape(B, -1))

    def check():
        # The timed run itself (complex64, the only dtype of the CUDA kernel) against the complex128
        # separable reference: its error must be within twice that of the eager complex64 loop, plus
        # 8 float32 ulps of max |x| = 1 (the 200-step recurrence is well conditioned in the state
        # itself: both errors are ~1e-7..4e-6). complex128 exactness is tested in tests/complex_rnn.
        x128, om128 = x0.to(torch.complex128), omega.double()
        want = reference.run_separable_ref(x128, om128, mask, alpha, sigma, S, True, S, S + 1)[:, 0]
        got = impls["fused"]()[:, 0].to(torch.complex128)
        eager = impls["eager"]().to(torch.complex128)
        err, err_eager = (got - want).abs().max(), (eager - want).abs().max()
        return bool(err <= 2 * err_eager + 8 * torch.finfo(torch.float32).eps)
    note = f"{N}x{N} B={B} S={S} complex64, {coupling} coupling (alpha {alpha}, sigma {sigma}{', masked' if masked else ''})"
    return Case(impls, check, note=note)


for _N in (32, 64):
    for _c in COUPLINGS:
        register("cvrnn_run", f"{_N}x{_N}_B{B}_S{S}_{_c}")(lambda d, N=_N, c=_c: _case(d, N, c))
