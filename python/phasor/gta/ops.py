"""Fused GTA attention op: fake kernels, autograd, and the public wrapper.

Kernels: ``csrc/gta``; math and argument conventions: :mod:`phasor.gta.reference` (the test oracle).
"""
from __future__ import annotations

import torch

__all__ = ["gta_attention"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _param_dtype(dtype):
    return torch.float32 if dtype in _LOW_PRECISION else dtype


# ---------------------------------------------------------------------------- fake kernels
def _check(q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask):
    """Mirror of gta.h's check_fwd (runs on meta tensors and under torch.compile)."""
    torch._check(q.dim() == 4, lambda: f"q must be [B, H, Nq, d], got {tuple(q.shape)}")
    torch._check(k.dim() == 4, lambda: f"k must be [B, H, Nk, d], got {tuple(k.shape)}")
    B, H, Nq, d = q.shape
    Nk = k.shape[2]
    torch._check(tuple(k.shape) == (B, H, Nk, d), lambda: f"k must be [{B}, {H}, Nk, {d}], got {tuple(k.shape)}")
    torch._check(tuple(v.shape) == tuple(k.shape), lambda: f"v must have k's shape, got {tuple(v.shape)}")
    torch._check(len(dims) == 4, lambda: f"dims must be (d_triv, d_se3, d_so3, d_so2), got {dims}")
    torch._check(sum(dims) == d, lambda: f"dims must add up to the head dim d = {d}, got {dims}")
    torch._check(dims[1] % 4 == 0 and dims[2] % 8 == 0 and dims[3] % 4 == 0,
                 lambda: f"dims need d_se3 % 4, d_so3 % 8, d_so2 % 4 == 0, got {dims}")
    torch._check(q_se3.dim() == 4 and k_se3.dim() == 4, lambda: "q_se3 / k_se3 must be [B, V, 4, 4]")
    Vq, Vk = q_se3.shape[1], k_se3.shape[1]
    torch._check(tuple(q_se3.shape) == (B, Vq, 4, 4), lambda: f"q_se3 must be [{B}, Vq, 4, 4]")
    torch._check(tuple(k_se3.shape) == (B, Vk, 4, 4), lambda: f"k_se3 must be [{B}, Vk, 4, 4]")
    torch._check(tuple(q_so3.shape) == (B, Vq, 8, 8), lambda: f"q_so3 must be [{B}, {Vq}, 8, 8]")
    torch._check(tuple(k_so3.shape) == (B, Vk, 8, 8), lambda: f"k_so3 must be [{B}, {Vk}, 8, 8]")
    torch._check(Nq % Vq == 0, lambda: f"Nq = {Nq} query tokens must split evenly into the {Vq} views of q_se3")
    torch._check(Nk % Vk == 0, lambda: f"Nk = {Nk} key tokens must split evenly into the {Vk} views of k_se3")
    torch._check(tuple(q_pos.shape) == (B, Nq, 2), lambda: f"q_pos must be [{B}, {Nq}, 2]")
    torch._check(tuple(k_pos.shape) == (B, Nk, 2), lambda: f"k_pos must be [{B}, {Nk}, 2]")
    torch._check(tuple(freqs.shape) == (dims[3] // 4,), lambda: f"freqs must be [{dims[3] // 4}]")
    if key_mask is not None:
        torch._check(key_mask.dtype == torch.bool and tuple(key_mask.shape) == (B, Nk),
                     lambda: f"key_mask must be bool [{B}, {Nk}]")


@torch.library.register_fake("phasor::gta_attention_fwd")
def _fwd_fake(q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask, scale, v_transform):
    _check(q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask)
    return torch.empty_like(q, memory_format=torch.contiguous_format), \
        q.new_empty(q.shape[:3], dtype=_param_dtype(q.dtype))


@torch.library.register_fake("phasor::gta_attention_bwd")
def _bwd_fake(grad_out, q, k, v, out, lse, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask, scale,
              v_transform):
    _check(q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask)
    torch._check(grad_out.shape == q.shape, lambda: "grad_out must have q's shape")
    c = torch.contiguous_format
    return (torch.empty_like(q, memory_format=c), torch.empty_like(k, memory_format=c),
            torch.empty_like(v, memory_format=c), torch.empty_like(q_se3, memory_format=c),
            torch.empty_like(k_se3, memory_format=c))


# ---------------------------------------------------------------------------- autograd
def _setup(ctx, inputs, output):
    q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask, scale, v_transform = inputs
    out, lse = output
    ctx.dims, ctx.scale, ctx.v_transform = list(dims), scale, v_transform
    ctx.save_for_backward(q, k, v, out, lse, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, key_mask)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, key_mask = ctx.saved_tensors
    # lse is an auxiliary output (the backward's statistics); its gradient is not propagated
    g = torch.ops.phasor.gta_attention_bwd(grad_out.contiguous(), q, k, v, out, lse, q_se3, k_se3, q_so3, k_so3,
                                           q_pos, k_pos, freqs, ctx.dims, key_mask, ctx.scale, ctx.v_transform)
    dq, dk, dv, dq_se3, dk_se3 = g
    return dq, dk, dv, dq_se3, dk_se3, None, None, None, None, None, None, None, None, None


torch.library.register_autograd("phasor::gta_attention_fwd", _backward, setup_context=_setup)


# ---------------------------------------------------------------------------- public wrapper
def gta_attention(q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs, dims, key_mask=None, scale=None,
                  v_transform=True, return_lse=False):
    """Geometric transform attention O = P Attn(P^T Q, P^-1 K, P^-1 V), fused (O(N) memory).

    Args:
        q: ``[B, H, Nq, d]``; k, v: ``[B, H, Nk, d]`` (float32/float64, or fp16/bf16 storage with float32
            math inside; float64 on CPU only).
        q_se3: ``[B, Vq, 4, 4]`` query-view SE(3) blocks P = M_s(E) (differentiable: trans_coeff trains).
        k_se3: ``[B, Vk, 4, 4]`` key-view blocks P^-1 = M_s(E^-1).
        q_so3, k_so3: ``[B, V, 8, 8]`` blockdiag(D1, D2) of the view rotation (query side D, key side D^T).
        q_pos, k_pos: ``[B, N, 2]`` token coordinates; freqs: ``[F]`` angular frequencies (d_so2 = 4F).
        dims: ``(d_triv, d_se3, d_so3, d_so2)`` channel split of each head, in this order.
        key_mask: optional ``[B, Nk]`` bool, True = attend; queries with no key get 0.
        scale: logit scale (default d^-0.5). v_transform: False = the RoPE-like Q/K-only mode.
    Geometry tensors are float32 for fp16/bf16 inputs, else q's dtype. Tokens are view-major.
    Returns out ``[B, H, Nq, d]`` (and the log-sum-exp ``[B, H, Nq]`` with return_lse).
    """
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    out, lse = torch.ops.phasor.gta_attention_fwd(q, k, v, q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs,
                                                  list(dims), key_mask, scale, bool(v_transform))
    return (out, lse) if return_lse else out
