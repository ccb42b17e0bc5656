"""Rotating layers (official ``RotatingLayers.py`` semantics) on top of the fused epilogue ops.

Every layer maps rotating features ``z [B, n, C, *spatial]`` to new ones, with one real-valued
operator ``W`` shared across the n rotation dims. Layers pass ``(z, mag)`` pairs, where
``mag = |z|`` over n comes out of the fused epilogue for free: the next layer's chi = W(|z|)
reuses it instead of recomputing the norm (spec §10.3; same values and gradients).

``fused=False`` runs the plain-PyTorch reference instead (benchmark baseline, tests).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from . import ops
from .reference import apply_shared, lift_input, rot_bn_epilogue_ref, rot_ln_epilogue_ref

__all__ = ["RotatingConv2d", "RotatingConvTranspose2d", "RotatingLinear"]


class _RotatingLayer(nn.Module):
    """Shared part: the rotation bias [n, C_out], its init U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def __init__(self, n: int, out_channels: int, fan_in: int, fused: bool):
        super().__init__()
        if n < 1:
            raise ValueError(f"n (rotation dims) must be >= 1, got {n}")
        self.n, self.fused = n, fused
        bound = 1.0 / math.sqrt(fan_in)
        self.rot_bias = nn.Parameter(torch.empty(n, out_channels).uniform_(-bound, bound))

    def _check_input(self, z: torch.Tensor, mag, feature_dim: int, expect_dim: int, what: str):
        if z.dim() != expect_dim or z.shape[1] != self.n:
            raise ValueError(f"{type(self).__name__}: z must be {what} with n={self.n}, got {tuple(z.shape)}")
        if z.shape[2] != feature_dim:
            raise ValueError(f"{type(self).__name__}: z has {z.shape[2]} channels, expected {feature_dim}")
        if mag is not None and (mag.shape[0] != z.shape[0] or mag.shape[1:] != z.shape[2:]):
            raise ValueError(f"{type(self).__name__}: mag must be [B, C, ...] = {tuple(z.shape[:1] + z.shape[2:])}, "
                             f"got {tuple(mag.shape)}")


class _RotatingConvBase(_RotatingLayer):
    """Conv-like rotating layer with BatchNorm2d on the magnitudes."""

    conv: nn.Module

    def __init__(self, n, out_channels, fan_in, fused):
        super().__init__(n, out_channels, fan_in, fused)
        self.norm = nn.BatchNorm2d(out_channels)

    def _epilogue(self, psi, chi):
        bn = self.norm  # holds the parameters, running statistics and state_dict layout of nn.BatchNorm2d
        momentum = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats:
            bn.num_batches_tracked.add_(1)
            if bn.momentum is None:  # cumulative moving average, as nn.BatchNorm
                momentum = 1.0 / float(bn.num_batches_tracked)
        training = bn.training or not bn.track_running_stats
        if self.fused:
            return ops.rot_bn_epilogue(psi, chi, self.rot_bias, bn.weight, bn.bias, bn.running_mean,
                                       bn.running_var, training, momentum, bn.eps)
        return rot_bn_epilogue_ref(psi, chi, self.rot_bias, bn.weight, bn.bias, bn.running_mean,
                                   bn.running_var, training, momentum, bn.eps)

    def forward(self, z: torch.Tensor, mag: torch.Tensor | None = None):
        """z [B, n, C_in, H, W] (and optionally mag = |z| [B, C_in, H, W]) -> (z_out, mag_out)."""
        self._check_input(z, mag, self.conv.in_channels, 5, "[B, n, C, H, W]")
        psi = apply_shared(self.conv, z)
        chi = self.conv(torch.linalg.vector_norm(z, dim=1) if mag is None else mag)
        return self._epilogue(psi, chi)

    def forward_lifted(self, x: torch.Tensor):
        """First layer on a non-negative image x [B, C_in, H, W]: the input is the lift [x, 0, ..., 0],
        so psi = [W(x), 0, ...] and chi = W(|x|) = W(x): one conv instead of n + 1 (spec §10.2).
        The caller guarantees x >= 0 (the autoencoder checks it)."""
        if x.dim() != 4 or x.shape[1] != self.conv.in_channels:
            raise ValueError(f"{type(self).__name__}: x must be [B, {self.conv.in_channels}, H, W], got {tuple(x.shape)}")
        if not self.fused:  # the official path: lift, then n + 1 convs
            return self.forward(lift_input(x, self.n))
        return self._epilogue(self.conv(x).unsqueeze(1), None)


class RotatingConv2d(_RotatingConvBase):
    """Rotating Conv2d (bias-free conv shared across the n rotation dims, BN on magnitudes)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, *, n: int, fused: bool = True):
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(n, out_channels, in_channels * ks[0] * ks[1], fused)
        self.conv = nn.Conv2d(in_channels, out_channels, ks, stride, padding, bias=False)


class RotatingConvTranspose2d(_RotatingConvBase):
    """Rotating ConvTranspose2d; the official code's bias fan_in is out_channels * k * k."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=2, padding=1, output_padding=1, *,
                 n: int, fused: bool = True):
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        super().__init__(n, out_channels, out_channels * ks[0] * ks[1], fused)
        self.conv = nn.ConvTranspose2d(in_channels, out_channels, ks, stride, padding, output_padding, bias=False)


class RotatingLinear(_RotatingLayer):
    """Rotating Linear with LayerNorm over the output features."""

    def __init__(self, in_features: int, out_features: int, *, n: int, fused: bool = True):
        super().__init__(n, out_features, in_features, fused)
        self.fc = nn.Linear(in_features, out_features, bias=False)
        self.norm = nn.LayerNorm(out_features)

    def forward(self, z: torch.Tensor, mag: torch.Tensor | None = None):
        """z [B, n, F_in] (and optionally mag = |z| [B, F_in]) -> (z_out [B, n, F_out], mag_out [B, F_out])."""
        self._check_input(z, mag, self.fc.in_features, 3, "[B, n, F]")
        psi = self.fc(z)
        chi = self.fc(torch.linalg.vector_norm(z, dim=1) if mag is None else mag)
        ln = self.norm
        if self.fused:
            return ops.rot_ln_epilogue(psi, chi, self.rot_bias, ln.weight, ln.bias, ln.eps)
        return rot_ln_epilogue_ref(psi, chi, self.rot_bias, ln.weight, ln.bias, ln.eps)
