"""Group representations of GTA (Miyato et al., ICLR 2024): the per-token block-diagonal P.

Conventions (the official NVS code): E is the world->camera extrinsic of a view, canonicalised to the
first input view; P = blockdiag(I_triv, M_s(E)^{(+)d_se3/4}, [D1(R) (+) D2(R)]^{(+)d_so3/8},
(+)_{f,a} R(-phi_{f,a}(x))) with R the rotation block of E. Q gets P^T, K and V get P^-1, the
output gets P. Channel order inside a head: [triv | se3 | so3 | so2].
"""
from __future__ import annotations

import math

import torch

__all__ = ["scale_mask", "canonicalize", "rigid_inverse", "se3_blocks", "so2_frequencies", "so2_angles",
           "rot2", "wigner_d1", "wigner_d2", "so3_blocks", "wigner_j", "wigner_d_euler"]


def scale_mask(trans_coeff: torch.Tensor) -> torch.Tensor:
    """[[1,1,1,s]]*3 + [[0,0,0,1]] as a differentiable 4x4 (applied elementwise, as official `scale_mask`)."""
    s = trans_coeff.reshape(())
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    row = torch.stack([one, one, one, s])
    return torch.stack([row, row, row, torch.stack([zero, zero, zero, one])])


def rigid_inverse(E: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid 4x4 transforms [R t; 0 1] -> [R^T -R^T t; 0 1] (exact, no LU)."""
    R, t = E[..., :3, :3], E[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    top = torch.cat([Rt, -Rt @ t], -1)
    return torch.cat([top, E[..., 3:, :]], -2)


def canonicalize(E: torch.Tensor, E_canon: torch.Tensor) -> torch.Tensor:
    """E_v @ inv(E_canon): extrinsics relative to the canonical (first input) view. E [B,V,4,4], E_canon [B,4,4]."""
    return E @ rigid_inverse(E_canon).unsqueeze(1)


def se3_blocks(E: torch.Tensor, trans_coeff: torch.Tensor):
    """(P, P^-1) = (M_s(E), M_s(E^-1)) with s = trans_coeff (gradients flow into s)."""
    mask = scale_mask(trans_coeff).to(E.dtype)
    return E * mask, rigid_inverse(E) * mask


def so2_frequencies(F: int, kind: str = "nvs", max_freq: float = 1.0, base: float = 10000.0) -> torch.Tensor:
    """Angular frequencies (radians per unit coordinate) of the F SO(2) frequency pairs.

    'nvs' (official main branch): 2*pi*max_freq*2^(f-F), f = 1..F, for coordinates in [0, 1).
    'rope' (DiT branch): base^(-f/F), f = 0..F-1, for integer patch coordinates."""
    f = torch.arange(F, dtype=torch.float64)
    if kind == "nvs":
        return 2 * math.pi * max_freq * torch.pow(2.0, f + 1 - F)
    if kind == "rope":
        return torch.pow(float(base), -f / F)
    raise ValueError(f"so2_frequencies: kind must be 'nvs' or 'rope', got {kind!r}")


def so2_angles(pos: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """[..., 2F] angles phi_p for pair p = 2f + a (frequency-major, axis-minor): pos[..., a] * freqs[f]."""
    return (freqs.to(pos.dtype)[:, None] * pos.unsqueeze(-2)).flatten(-2)


def rot2(phi: torch.Tensor) -> torch.Tensor:
    """[..., 2, 2] rotation matrices [[c, -s], [s, c]]."""
    c, s = torch.cos(phi), torch.sin(phi)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


# ---------------------------------------------------------------- SO(3) Wigner-D (degrees 1, 2)
# Real basis m = -l..l without Condon-Shortley sign: l=1 (y, z, x); l=2 Y_m(v) = v^T B_m v.
_S3 = math.sqrt(3) / 2


def _b2(dtype, device):
    B = torch.zeros(5, 3, 3, dtype=dtype, device=device)
    B[0, 0, 1] = B[0, 1, 0] = _S3
    B[1, 1, 2] = B[1, 2, 1] = _S3
    B[2] = torch.diag(torch.tensor([-0.5, -0.5, 1.0], dtype=dtype, device=device))
    B[3, 0, 2] = B[3, 2, 0] = _S3
    B[4] = torch.diag(torch.tensor([_S3, -_S3, 0.0], dtype=dtype, device=device))
    return B


_PERM = [1, 2, 0]  # (x, y, z) -> (y, z, x)


def wigner_d1(R: torch.Tensor) -> torch.Tensor:
    """Degree-1 real Wigner-D, D(R) Y(v) = Y(Rv): the rotation in the (y, z, x) basis."""
    return R[..., _PERM, :][..., :, _PERM]


def wigner_d2(R: torch.Tensor) -> torch.Tensor:
    """Degree-2 real Wigner-D: D_mn = (2/3) <R^T B_m R, B_n>_F (Euler-free, no singular branches)."""
    B = _b2(R.dtype, R.device)
    Rt = R.transpose(-1, -2)
    RBR = Rt.unsqueeze(-3) @ B @ R.unsqueeze(-3)  # [..., 5, 3, 3]
    return (2.0 / 3.0) * torch.einsum("...mij,nij->...mn", RBR, B)


def so3_blocks(R: torch.Tensor) -> torch.Tensor:
    """[..., 8, 8] blockdiag(D1(R), D2(R)), the SO(3) block of P for a view with rotation R."""
    out = R.new_zeros(*R.shape[:-2], 8, 8)
    out[..., :3, :3] = wigner_d1(R)
    out[..., 3:, 3:] = wigner_d2(R)
    return out


def _basis(l: int, v: torch.Tensor) -> torch.Tensor:
    if l == 1:
        return v[..., _PERM]
    B = _b2(v.dtype, v.device)
    return torch.einsum("ki,mij,kj->km", v, B, v)


def wigner_j(l: int, dtype=torch.float64) -> torch.Tensor:
    """J_l = D^l(Q), Q the rotation by pi about (0,1,1)/sqrt2, computed by least squares
    (the official J_dense.pt is not available; spec section 3.4)."""
    Q = torch.tensor([[-1.0, 0, 0], [0, 0, 1], [0, 1, 0]], dtype=torch.float64)
    v = torch.nn.functional.normalize(torch.randn(64, 3, dtype=torch.float64,
                                                  generator=torch.Generator().manual_seed(0)), dim=-1)
    Y, YQ = _basis(l, v), _basis(l, v @ Q.T)
    # YQ[k] = D Y[k]  ->  Y D^T = YQ
    return torch.linalg.lstsq(Y, YQ).solution.T.to(dtype)


def _z(l: int, theta: torch.Tensor) -> torch.Tensor:
    n = 2 * l + 1
    Z = theta.new_zeros(*theta.shape, n, n)
    for i in range(n):
        f = l - i
        Z[..., i, i] = torch.cos(f * theta)
        if i != l:
            Z[..., i, n - 1 - i] = torch.sin(f * theta)
    return Z


def wigner_d_euler(l: int, R: torch.Tensor) -> torch.Tensor:
    """Official pipeline D = Z(g3) J Z(g2) J Z(g1) from ZYZ Euler angles (regular branch only;
    used to cross-check the Euler-free formulas)."""
    g1 = torch.atan2(R[..., 2, 1], -R[..., 2, 0])
    g2 = torch.atan2(torch.sqrt(R[..., 0, 2] ** 2 + R[..., 1, 2] ** 2), R[..., 2, 2])
    g3 = torch.atan2(R[..., 1, 2], R[..., 0, 2])
    J = wigner_j(l, R.dtype).to(R.device)
    return _z(l, g3) @ J @ _z(l, g2) @ J @ _z(l, g1)
