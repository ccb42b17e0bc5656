"""Plain-PyTorch reference of the Rotating Features ops (Löwe et al. 2023, official code).

These mirror the official ``RotatingLayers.py`` step by step; they are the test oracle and the
benchmark baseline of the fused ops in :mod:`phasor.rotating_features.ops`.

Shapes: ``psi = W(z)`` is ``[B, n, C, *spatial]`` (the n rotation dims folded through one shared
operator ``W``), ``chi = W(|z|)`` is ``[B, C, *spatial]``, ``rot_bias`` is ``[n, C]``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NORMALIZE_EPS = 1e-12  # F.normalize's default clamp, kept by the fused kernels


def _bias_view(rot_bias: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """[n, C] -> [1, n, C, 1, ...] broadcastable against psi."""
    return rot_bias.reshape(1, *rot_bias.shape, *([1] * (psi.dim() - 3)))


def rot_epilogue_ref(psi, chi, rot_bias, norm, bias_in_norm: bool = False):
    """out = normalize(psi + b) * relu(norm(0.5 |psi| + 0.5 chi)); returns (out, mag).

    ``norm`` is any callable on the magnitude map ``[B, C, *spatial]``. The official code takes
    ``|psi|`` before adding the rotation bias (default); ``bias_in_norm=True`` gives the paper's
    ``psi = W(z) + b`` reading instead, where the bias also enters the magnitude.
    """
    z = psi + _bias_view(rot_bias, psi)
    magnitude = torch.linalg.vector_norm(z if bias_in_norm else psi, dim=1)
    m = F.relu(norm(0.5 * magnitude + 0.5 * chi))
    return F.normalize(z, dim=1) * m.unsqueeze(1), m


def rot_bn_epilogue_ref(psi, chi, rot_bias, weight, bias, running_mean=None, running_var=None,
                        training=True, momentum=0.1, eps=1e-5):
    """BatchNorm variant; updates running_mean / running_var in place when training (as BN does).

    ``chi=None`` is the first-layer lift: psi ``[B, 1, C, *spatial]`` is ``W(x)`` for ``x >= 0``,
    so the full psi is ``[W(x), 0, ..., 0]`` and ``chi = W(|x|) = W(x)``.
    """
    psi, chi = expand_lift(psi, chi, rot_bias.shape[0])

    def bn(m):
        return F.batch_norm(m, running_mean, running_var, weight, bias, training, momentum, eps)

    return rot_epilogue_ref(psi, chi, rot_bias, bn)


def rot_ln_epilogue_ref(psi, chi, rot_bias, weight, bias, eps=1e-5):
    """LayerNorm variant (rotating linear layers): psi [B, n, C], chi [B, C], LN over C."""
    def ln(m):
        return F.layer_norm(m, (m.shape[-1],), weight, bias, eps)

    return rot_epilogue_ref(psi, chi, rot_bias, ln)


def expand_lift(psi, chi, n):
    """Materialise the lifted input of the first layer: [W(x)] -> ([W(x), 0, ...], W(x))."""
    if chi is not None:
        return psi, chi
    zeros = psi.new_zeros(psi.shape[0], n - 1, *psi.shape[2:])
    return torch.cat([psi, zeros], dim=1), psi[:, 0]


def lift_input(x: torch.Tensor, n: int) -> torch.Tensor:
    """Official ``add_rotation_dimensions``: x [B, C, H, W] -> z [B, n, C, H, W] = [x, 0, ..., 0]."""
    return torch.cat([x.unsqueeze(1), x.new_zeros(x.shape[0], n - 1, *x.shape[1:])], dim=1)


def apply_shared(layer, z: torch.Tensor) -> torch.Tensor:
    """Apply a real-valued layer to every rotation slice: z [B, n, ...] -> [B, n, ...] (fold n into B)."""
    b, n = z.shape[:2]
    out = layer(z.reshape(b * n, *z.shape[2:]))
    return out.reshape(b, n, *out.shape[1:])
