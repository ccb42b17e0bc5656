"""GTA modules: a drop-in attention layer (self and cross), a pre-norm transformer block.

Geometry per token set: ``Geometry(E, pos)`` with E [B, V, 4, 4] world->camera extrinsics (view-major
tokens, N/V per view) and pos [B, N, 2] normalised pixel coordinates. The layer owns the learnable
``trans_coeff`` (init 0.01, as the official code) and builds P from the geometry on every call.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from . import reference, reps
from .ops import gta_attention

__all__ = ["Geometry", "GTAttention", "GTABlock"]


@dataclasses.dataclass
class Geometry:
    E: torch.Tensor    # [B, V, 4, 4] world -> camera, canonicalised
    pos: torch.Tensor  # [B, N, 2]


class GTAttention(nn.Module):
    """Multi-head attention with geometric transforms on Q, K, V and the output.

    dims = (d_triv, d_se3, d_so3, d_so2) per head; v_transform=False is the RoPE-like mode; dims
    (head_dim, 0, 0, 0) is plain attention (the APE baseline). fused=False runs the plain-PyTorch
    reference (same parameters), for comparisons."""

    def __init__(self, dim, heads, dims, v_transform=True, kv_dim=None, freq_kind="nvs", fused=True):
        super().__init__()
        self.heads, self.dims, self.v_transform, self.fused = heads, tuple(dims), v_transform, fused
        self.head_dim = sum(dims)
        inner = heads * self.head_dim
        kv_dim = dim if kv_dim is None else kv_dim
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(kv_dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.trans_coeff = nn.Parameter(torch.tensor(0.01)) if dims[1] else None
        self.register_buffer("freqs", reps.so2_frequencies(dims[3] // 4, freq_kind).float(), persistent=False)

    def _side(self, geo: Geometry, dtype):
        E = geo.E.to(dtype)
        s = self.trans_coeff if self.trans_coeff is not None else torch.zeros((), dtype=dtype, device=E.device)
        P, P_inv = reps.se3_blocks(E, s.to(dtype))
        D = reps.so3_blocks(E[..., :3, :3]).detach()
        return P, P_inv, D

    def forward(self, x, geo_q: Geometry, z=None, geo_k: Geometry | None = None, key_mask=None):
        z, geo_k = (x, geo_q) if z is None else (z, geo_k)
        B, Nq, _ = x.shape
        Nk = z.shape[1]
        q = self.to_q(x).view(B, Nq, self.heads, -1).transpose(1, 2)
        k, v = self.to_kv(z).view(B, Nk, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        pdt = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        q_P, _, q_D = self._side(geo_q, pdt)
        _, k_Pinv, k_D = self._side(geo_k, pdt)
        args = (q, k, v, q_P, k_Pinv, q_D, k_D.transpose(-1, -2), geo_q.pos.to(pdt), geo_k.pos.to(pdt),
                self.freqs.to(pdt), self.dims, key_mask, self.head_dim ** -0.5, self.v_transform)
        out = gta_attention(*args) if self.fused else reference.gta_attention_ref(*args)[0]
        return self.to_out(out.transpose(1, 2).reshape(B, Nq, -1))


class GTABlock(nn.Module):
    """Pre-norm transformer block: (cross-)attention + GELU MLP (mlp_dim = 2 * dim, as official)."""

    def __init__(self, dim, heads, dims, v_transform=True, kv_dim=None, cross=False, **kw):
        super().__init__()
        self.cross = cross
        self.norm = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(kv_dim or dim) if cross else None
        self.attn = GTAttention(dim, heads, dims, v_transform, kv_dim, **kw)
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, geo_q, z=None, geo_k=None, key_mask=None):
        zn = self.norm_kv(z) if self.cross else None
        x = x + self.attn(self.norm(x), geo_q, zn, geo_k, key_mask)
        return x + self.mlp(x)
