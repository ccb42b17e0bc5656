"""The Rotating Features autoencoder (official ``RotatingAutoEncoder`` / ``ConvEncoder`` / ``ConvDecoder``).

Channels ``[C_in, h, 2h, 2h, 2h]``; every layer applies BN/LN + ReLU to its magnitudes, the last
one included. Encoder: 5 rotating convs (strides 2,1,2,1,2) and a rotating linear to
``linear_dim``; decoder: a rotating linear back, then ConvT/Conv/ConvT/Conv/ConvT. The output
model is ``sigmoid(w_c |z|_c + b_c)`` with w = 1, b = 0 at init. Defaults = the paper's 4Shapes
configuration (32x32x1, n = 8, hidden 32, linear 64).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .nn import RotatingConv2d, RotatingConvTranspose2d, RotatingLinear
from .reference import lift_input

__all__ = ["RotatingAutoEncoder"]


class RotatingAutoEncoder(nn.Module):
    def __init__(self, in_channels: int = 1, image_size: int = 32, n: int = 8, hidden_dim: int = 32,
                 linear_dim: int = 64, fused: bool = True):
        super().__init__()
        h, h2 = hidden_dim, 2 * hidden_dim
        self.n, self.in_channels, self.image_size, self.fused = n, in_channels, image_size, fused
        self.latent = math.ceil(image_size / 8)
        self.encoder = nn.ModuleList([
            RotatingConv2d(in_channels, h, stride=2, n=n, fused=fused),
            RotatingConv2d(h, h, n=n, fused=fused),
            RotatingConv2d(h, h2, stride=2, n=n, fused=fused),
            RotatingConv2d(h2, h2, n=n, fused=fused),
            RotatingConv2d(h2, h2, stride=2, n=n, fused=fused),
        ])
        flat = h2 * self.latent * self.latent
        self.enc_linear = RotatingLinear(flat, linear_dim, n=n, fused=fused)
        self.dec_linear = RotatingLinear(linear_dim, flat, n=n, fused=fused)
        self.decoder = nn.ModuleList([
            RotatingConvTranspose2d(h2, h2, n=n, fused=fused),
            RotatingConv2d(h2, h2, n=n, fused=fused),
            RotatingConvTranspose2d(h2, h2, n=n, fused=fused),
            RotatingConv2d(h2, h, n=n, fused=fused),
            RotatingConvTranspose2d(h, in_channels, n=n, fused=fused),
        ])
        self.out_weight = nn.Parameter(torch.ones(in_channels))
        self.out_bias = nn.Parameter(torch.zeros(in_channels))

    def forward(self, x: torch.Tensor):
        """x [B, C_in, H, W] in [0, inf) -> (reconstruction [B, C_in, H, W], rotating output [B, n, C_in, H, W])."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        if not torch.compiler.is_compiling() and bool((x < 0).any()):
            raise ValueError("x must be non-negative (rotating features lift the input as its magnitude)")
        fused = self.fused
        # fused: first layer on the lifted input is one conv; magnitudes flow between layers (chi reuse)
        if fused:
            z, mag = self.encoder[0].forward_lifted(x)
        else:
            z, mag = self.encoder[0](lift_input(x, self.n))
        for layer in self.encoder[1:]:
            z, mag = layer(z, mag if fused else None)
        b, n, c, hh, ww = z.shape
        z, mag = self.enc_linear(z.reshape(b, n, -1), mag.reshape(b, -1) if fused else None)
        z, mag = self.dec_linear(z, mag if fused else None)
        z = z.reshape(b, n, c, hh, ww)
        mag = mag.reshape(b, c, hh, ww) if fused else None
        for layer in self.decoder:
            z, mag = layer(z, mag)
            mag = mag if fused else None
        if mag is None:  # the official output model recomputes the magnitude
            mag = torch.linalg.vector_norm(z, dim=1)
        recon = torch.sigmoid(self.out_weight.view(1, -1, 1, 1) * mag + self.out_bias.view(1, -1, 1, 1))
        return recon, z
