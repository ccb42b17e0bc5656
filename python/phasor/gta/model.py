"""Small SRT-style encoder-decoder for novel-view synthesis, with GTA, RoPE-like and APE variants.

Encoder: a stride-4 conv stem on each input view (32x32 -> 8x8 patch tokens, view-major), then
self-attention blocks. Decoder: every query is one target pixel (ray); cross-attention blocks over
the encoder tokens, then an MLP to RGB. The three variants share every module and differ only in
how geometry enters:
- ``gta``: no ray embeddings; P (SE(3) of the view + SO(2) of the pixel) in every attention layer on
  Q, K, V and the output (official GTA); decoder queries start from one learned constant;
- ``rope``: the same P on Q and K only (``v_transform=False``, the RoPE-like mode);
- ``ape``: plain attention; Fourier ray embeddings (origin + direction in the canonical frame)
  added to encoder tokens and used as decoder queries (the SRT-style absolute encoding).
"""
from __future__ import annotations

import torch
from torch import nn

from . import data
from .nn import GTABlock, Geometry
from .reps import rigid_inverse

KINDS = ("gta", "rope", "ape")


def fourier(x: torch.Tensor, octaves: int) -> torch.Tensor:
    f = 2.0 ** torch.arange(octaves, dtype=x.dtype, device=x.device) * torch.pi
    xf = (x.unsqueeze(-1) * f).flatten(-2)
    return torch.cat([x, xf.sin(), xf.cos()], -1)


class NVSModel(nn.Module):
    def __init__(self, kind="gta", dim=128, heads=4, head_dim=32, enc_layers=3, dec_layers=2, size=32, stride=4,
                 fused=True, split=None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"NVSModel: kind must be one of {KINDS}, got {kind!r}")
        self.kind, self.size, self.stride = kind, size, stride
        if kind == "ape":
            dims, vt = (head_dim, 0, 0, 0), True
        else:  # default: the spec's scaled-down split, se3 half, so2 half (F = head_dim / 8), no trivial channels
            dims = tuple(split) if split else (0, head_dim // 2, 0, head_dim // 2)
            vt = kind == "gta"
            if sum(dims) != head_dim:
                raise ValueError(f"NVSModel: split {dims} (triv, se3, so3, so2) must sum to head_dim={head_dim}")
        self.stem = nn.Sequential(nn.Conv2d(3, 96, 3, 2, 1), nn.ReLU(), nn.Conv2d(96, 96, 3, 2, 1), nn.ReLU(),
                                  nn.Conv2d(96, dim, 1))
        kw = dict(fused=fused)
        self.encoder = nn.ModuleList(GTABlock(dim, heads, dims, vt, **kw) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(GTABlock(dim, heads, dims, vt, cross=True, **kw) for _ in range(dec_layers))
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.ray_embed = nn.Sequential(nn.Linear(6 * 9, dim), nn.GELU(), nn.Linear(dim, dim)) if kind == "ape" else None
        self.render = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 256), nn.LeakyReLU(), nn.Linear(256, 256),
                                    nn.LeakyReLU(), nn.Linear(256, 3), nn.Sigmoid())

    def _rays(self, E, pix):
        """Fourier features of (origin, direction) in the canonical frame for pixels pix [B, N, 2] of views E [B, V, 4, 4]."""
        B, V = E.shape[:2]
        f = data.focal(self.size)
        c2w = rigid_inverse(E)
        pix = pix.view(B, V, -1, 2)
        d = torch.stack([(pix[..., 1] - self.size / 2) / f, (pix[..., 0] - self.size / 2) / f,
                         torch.ones_like(pix[..., 0])], -1)
        d = torch.nn.functional.normalize(d @ c2w[..., :3, :3].transpose(-1, -2), dim=-1)
        o = c2w[..., None, :3, 3].expand_as(d)
        return fourier(torch.cat([o / 4, d], -1), 4).reshape(B, -1, 54)

    def encode(self, images, E_in):
        """images [B, V, 3, S, S], E_in [B, V, 4, 4] -> tokens [B, V*T, dim] and their geometry."""
        B, V = images.shape[:2]
        x = self.stem(images.flatten(0, 1))  # [B*V, dim, h, w]
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2).reshape(B, V * h * w, -1)
        r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pix = (torch.stack([r, c], -1).reshape(-1, 2).float() * self.stride + self.stride // 2).to(x)
        pix = pix.expand(B, V, -1, -1).reshape(B, -1, 2)
        geo = Geometry(E_in, pix / self.size)
        if self.ray_embed is not None:
            x = x + self.ray_embed(self._rays(E_in, pix + 0.5))
        for blk in self.encoder:
            x = blk(x, geo)
        return x, geo

    def decode(self, z, geo_z, E_t, pix):
        """Target pixels pix [B, N, 2] (row, col indices) of the target view E_t [B, 1, 4, 4] -> RGB [B, N, 3]."""
        B, N = pix.shape[:2]
        if self.ray_embed is not None:
            x = self.ray_embed(self._rays(E_t, pix + 0.5))
        else:
            x = self.query.expand(B, N, -1)
        geo_q = Geometry(E_t, pix / self.size)
        for blk in self.decoder:
            x = blk(x, geo_q, z, geo_z)
        return self.render(x)

    def forward(self, images, E_in, E_t, pix):
        z, geo = self.encode(images, E_in)
        return self.decode(z, geo, E_t, pix)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
