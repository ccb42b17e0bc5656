"""Benchmark cases of GTA attention (registered with phasor.bench).

The issue's sizes: N = 256, 1024, 4096 tokens (self-attention, 2 views of N/2 tokens), 6 heads, head
dim 64 with the CLEVR-TR split (se3 32 = 8 blocks, so2 32 = F 8), forward and forward + backward.
Impls: the fused op; `eager` = the official-style path (einsum transforms + materialised softmax,
reference.gta_attention_ref); `compile` = that path under torch.compile; `transforms+sdpa` = the same
transforms around torch's scaled_dot_product_attention (the best library alternative: PRoPE / the DiT
branch do this); `sdpa-no-geometry` = plain SDPA on untransformed q, k, v (the floor).
CPU: float32; the `N1024_bf16_*` cases: bfloat16 q, k, v (float32 geometry) for the fused op (float32
math inside), transforms+sdpa and sdpa-no-geometry, with `fused-float32` (the fused op on float32 copies)
beside them, no eager/compile, and speedups against transforms+sdpa.
CUDA: bfloat16 q, k, v (float32 geometry), the fused op taking its tensor-core kernel, and
`sdpa-no-geometry` pinned to SDPA's flash backend (FlashAttention-2), the GPU target's reference; the
check there compares against the float32 reference at bfloat16 tolerance. CUDA forward + backward cases
also time `fused-atomic`: the fused op under PHASOR_GTA_CUDA_KERNEL=mma_atomic (the one-kernel atomic-dQ
backward; `fused` keeps the deterministic default), and check its gradients too.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from ..bench.registry import Case, compiled, outputs_close, register, scaled_close
from . import ops, reference, reps

DIMS = (0, 32, 0, 32)


def transforms_sdpa(q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask=None, scale=None,
                    v_transform=True):
    """Pre-transform Q, K, V, run SDPA (flash / memory-efficient backends where available), post-transform O."""
    qt = reference.transform(q, dims, q_se3, q_so3, q_pos, freqs, transpose=True, sign=1.0)
    kt = reference.transform(k, dims, k_se3, k_so3, k_pos, freqs, transpose=False, sign=1.0)
    vt = reference.transform(v, dims, k_se3, k_so3, k_pos, freqs, transpose=False, sign=1.0) if v_transform else v
    mask = None if key_mask is None else key_mask[:, None, None, :]
    o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    return reference.transform(o, dims, q_se3, q_so3, q_pos, freqs, transpose=False, sign=-1.0) if v_transform else o


def sdpa_flash(q, k, v, *rest):
    """Plain SDPA restricted to the flash backend (fp16/bf16 on CUDA)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v)


def with_kernel(run, kernel):
    """`run` (a whole forward + backward) under PHASOR_GTA_CUDA_KERNEL=kernel, which the op reads on every
    call; the previous value is restored afterwards."""
    def wrapped():
        old = os.environ.get("PHASOR_GTA_CUDA_KERNEL")
        os.environ["PHASOR_GTA_CUDA_KERNEL"] = kernel
        try:
            return run()
        finally:
            if old is None:
                os.environ.pop("PHASOR_GTA_CUDA_KERNEL", None)
            else:
                os.environ["PHASOR_GTA_CUDA_KERNEL"] = old
    return wrapped


def _inputs(device, N, H=6, B=1, V=2, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    d = sum(DIMS)
    q, k, v = (torch.randn(B, H, N, d, generator=g).to(device, dtype) for _ in range(3))
    R, _ = torch.linalg.qr(torch.randn(B * V, 3, 3, generator=g, dtype=torch.float64))
    E = torch.eye(4, dtype=torch.float64).repeat(B, V, 1, 1)
    E[..., :3, :3] = (R * torch.sign(torch.linalg.det(R))[:, None, None]).reshape(B, V, 3, 3)
    E[..., :3, 3] = torch.randn(B, V, 3, generator=g, dtype=torch.float64) * 2
    P, P_inv = reps.se3_blocks(E, torch.tensor(0.5, dtype=torch.float64))
    D = reps.so3_blocks(E[..., :3, :3])
    pos = torch.rand(B, N, 2, generator=g, dtype=torch.float64)
    freqs = reps.so2_frequencies(DIMS[3] // 4)
    geo = [t.float().to(device) for t in (P, P_inv, D, D.transpose(-1, -2).contiguous(), pos, pos, freqs)]
    return [q, k, v, *geo]


def _float32_fused(args, leaves, cot, backward):
    """The fused op on float32 copies of (bf16) args: the storage dtype's cost, side by side."""
    args32 = [a.detach().float().requires_grad_(i < len(leaves) and backward) for i, a in enumerate(args)]
    cot32 = cot.float()
    if backward:
        return lambda: torch.autograd.grad(ops.gta_attention(*args32, DIMS), args32[:len(leaves)], cot32)

    def run():
        with torch.no_grad():
            return ops.gta_attention(*args32, DIMS)
    return run


def _gta_case(device, N, backward, dtype=None):
    cuda = device == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    low = dtype != torch.float32
    args = _inputs(device, N, dtype=dtype)
    fused = lambda *a: ops.gta_attention(*a, DIMS)  # noqa: E731
    eager = lambda *a: reference.gta_attention_ref(*a, DIMS)[0]  # noqa: E731
    comp = compiled(eager)
    pre = lambda *a: transforms_sdpa(*a, DIMS)  # noqa: E731
    plain = sdpa_flash if cuda else (lambda q, k, v, *rest: F.scaled_dot_product_attention(q, k, v))  # noqa: E731
    impls = {"fused": fused, "eager": eager, "compile": comp, "transforms+sdpa": pre, "sdpa-no-geometry": plain}
    if low and not cuda:  # the bf16 CPU case: storage-dtype alternatives only (eager bf16 is not one)
        del impls["eager"], impls["compile"]
    leaves = args[:5]
    cot = torch.randn(args[0].shape, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    if backward:
        for t in leaves:
            t.requires_grad_()
        runners = {k: (lambda f=f: torch.autograd.grad(f(*args), leaves, cot, allow_unused=True))
                   for k, f in impls.items()}
        if cuda:  # right after `fused`, so the two backwards sit side by side in the table
            fused_run = runners.pop("fused")
            runners = {"fused": fused_run, "fused-atomic": with_kernel(fused_run, "mma_atomic"), **runners}
    else:
        def no_grad(f):
            def run():
                with torch.no_grad():
                    return f(*args)
            return run
        runners = {k: no_grad(f) for k, f in impls.items()}
    if low and not cuda:
        runners = {"fused": runners.pop("fused"), "fused-float32": _float32_fused(args, leaves, cot, backward),
                   **runners}

    def check_bf16():
        """bfloat16 storage: fused and transforms+sdpa against the float32 reference on the same values."""
        ref_leaves = [a.detach().float().requires_grad_() for a in leaves]
        ref_args = ref_leaves + args[5:]
        with torch.no_grad():
            truth = eager(*ref_args)
            ok = scaled_close(fused(*args).float(), truth, 2e-2) and scaled_close(pre(*args).float(), truth, 2e-2)
        if not backward:
            return ok
        g1 = torch.autograd.grad(fused(*args), leaves, cot)
        g3 = with_kernel(lambda: torch.autograd.grad(fused(*args), leaves, cot), "mma_atomic")() if cuda else g1
        g2 = torch.autograd.grad(eager(*ref_args), ref_leaves, cot.float())
        return ok and all(scaled_close([g.float() for g in g], g2, 5e-2) for g in (g1, g3))

    def check():
        if low:
            return check_bf16()
        with torch.no_grad():
            ok = outputs_close(fused(*args), eager(*args), rtol=1e-4, atol=1e-4) and \
                outputs_close(pre(*args), eager(*args), rtol=1e-4, atol=1e-4)
        if not backward:
            return ok
        g1 = torch.autograd.grad(fused(*args), leaves, cot)
        g2 = torch.autograd.grad(eager(*args), leaves, cot)
        return ok and scaled_close(g1, g2, 1e-4)
    note = (f"B=1 H=6 N={N} d=64 split {DIMS}, 2 views; "
            + ("bfloat16 (geometry float32), sdpa-no-geometry = flash backend" if cuda else
               "bfloat16 (geometry float32)" if low else "float32"))
    return Case(runners, check, baseline="transforms+sdpa" if low and not cuda else "eager", note=note)


for _N in (256, 1024, 4096):
    register("gta_attention", f"N{_N}_fwd")(lambda d, n=_N: _gta_case(d, n, backward=False))
    register("gta_attention", f"N{_N}_fwdbwd")(lambda d, n=_N: _gta_case(d, n, backward=True))
# CPU bfloat16 storage (CUDA's cases above are bfloat16 already)
for _bwd in (False, True):
    register("gta_attention", "N1024_bf16_" + ("fwdbwd" if _bwd else "fwd"), devices=("cpu",))(
        lambda d, b=_bwd: _gta_case(d, 1024, backward=b, dtype=torch.bfloat16))
