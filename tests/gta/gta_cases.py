"""Random GTA attention inputs shared by the GTA tests (non-orthogonal SE(3) poses, real Wigner-D, SO(2))."""
from __future__ import annotations

import torch

from phasor.gta import reps


def random_rotations(n, dtype=torch.float64, gen=None):
    A = torch.randn(n, 3, 3, dtype=torch.float64, generator=gen)
    Q, _ = torch.linalg.qr(A)
    return (Q * torch.sign(torch.linalg.det(Q))[:, None, None]).to(dtype)


def random_extrinsics(B, V, dtype=torch.float64, gen=None, trans=2.0):
    E = torch.zeros(B, V, 4, 4, dtype=dtype)
    E[..., :3, :3] = random_rotations(B * V, dtype, gen).reshape(B, V, 3, 3)
    E[..., :3, 3] = trans * torch.randn(B, V, 3, dtype=torch.float64, generator=gen).to(dtype)
    E[..., 3, 3] = 1
    return E


def geometry(Eq, Ek, Nq, Nk, dims, trans_coeff, gen=None, freq_kind="nvs"):
    """(q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs) for query views Eq and key views Ek."""
    dtype = Eq.dtype
    B = Eq.shape[0]
    q_se3, _ = reps.se3_blocks(Eq, trans_coeff)
    _, k_se3 = reps.se3_blocks(Ek, trans_coeff)
    q_so3 = reps.so3_blocks(Eq[..., :3, :3])
    k_so3 = reps.so3_blocks(Ek[..., :3, :3]).transpose(-1, -2).contiguous()
    q_pos = torch.rand(B, Nq, 2, dtype=torch.float64, generator=gen).to(dtype)
    k_pos = torch.rand(B, Nk, 2, dtype=torch.float64, generator=gen).to(dtype)
    freqs = reps.so2_frequencies(dims[3] // 4, freq_kind).to(dtype)
    return q_se3, k_se3, q_so3, k_so3, q_pos, k_pos, freqs


def make_inputs(B=2, H=2, Nq=6, Nk=8, dims=(4, 8, 8, 12), Vq=2, Vk=2, dtype=torch.float64, seed=0,
                trans_coeff=0.7, mask=False):
    gen = torch.Generator().manual_seed(seed)
    d = sum(dims)
    q, k, v = (torch.randn(B, H, n, d, dtype=torch.float64, generator=gen).to(dtype) for n in (Nq, Nk, Nk))
    Eq = random_extrinsics(B, Vq, torch.float64, gen)
    Ek = random_extrinsics(B, Vk, torch.float64, gen)
    s = torch.tensor(trans_coeff, dtype=torch.float64)
    geo = [t.to(dtype) for t in geometry(Eq, Ek, Nq, Nk, dims, s, gen)]
    key_mask = (torch.rand(B, Nk, generator=gen) > 0.3) if mask else None
    return [q, k, v, *geo], list(dims), key_mask
